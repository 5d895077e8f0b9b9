/**
 * The device side of the HTTP API (docs/protocol.md §2, §3, §8): register, assignment with
 * ETag, reports. Errors come in two kinds the agent treats differently:
 * {@link ServerUnavailable} (network, timeout, 5xx, 429, a redirect, a body that is not JSON:
 * back off, honouring `Retry-After`) and {@link ServerRejected} (any other 4xx).
 */

import type { Http, HttpResponse } from "./adapters.js";
import { check, firstLine, httpError, retriable, ServerRejected, ServerUnavailable } from "./errors.js";
import { isJsonObject, parseJson, toPlain, type JsonValue } from "./json.js";

/** A signed block of the assignment (the assignment itself, or its `shadow`). */
export interface AssignedRelease {
  model?: string;
  version: string;
  variant: { id: string; sha256: string; [k: string]: unknown };
  artifact_url: string;
  golden_url: string;
  /** lossless: number lexemes kept for the signature */
  manifest: JsonValue;
}

export interface Assignment extends AssignedRelease {
  model: string;
  cohort: "stable" | "canary";
  rollout_id: number | null;
  report_interval_seconds: number;
  shadow?: AssignedRelease & { sample_share?: number; variant_id?: string; sha256?: string };
}

/** What a device says about itself at registration (§2.2). */
export interface DeviceDescription {
  device_class: string;
  arch: string;
  os: string;
  ram_bytes: number;
  runtimes: Record<string, string>;
  attributes?: Record<string, string>;
}

/** The assignment answer's hint that the credential is old enough to rotate (§2.5). */
export const ROTATE_HEADER = "Edgeship-Rotate-Credential";

export class ServerApi {
  /** the device credential, sent to the server's own origin only */
  credential: string | null = null;
  /** the last assignment answer (200 or 304) asked this device to rotate its credential */
  rotationRequested = false;
  private readonly base: string;
  private readonly origin: string;

  constructor(baseUrl: string, private readonly http: Http, readonly timeoutMs = 10_000,
              private readonly nowMs: () => number = Date.now) {
    this.base = baseUrl.replace(/\/+$/, "");
    this.origin = originOf(this.base);
  }

  /** Absolute URL of a server path (`/v1/artifacts/<sha>`); an absolute URL stays as it is. */
  url(path: string): string {
    return /^https?:\/\//i.test(path) ? path : `${this.base}/${path.replace(/^\/+/, "")}`;
  }

  /** `Authorization` for a request to `url`: none for another origin, which must never see the credential. */
  authHeaders(url?: string): Record<string, string> {
    if (this.credential === null || (url !== undefined && originOf(url) !== this.origin)) return {};
    return { Authorization: `Bearer ${this.credential}` };
  }

  /** Enroll; `pending` when the device waits for an operator to accept it. */
  async register(enrollmentToken: string, device: DeviceDescription):
      Promise<{ deviceId: string; credential: string; pending: boolean }> {
    const [, body] = await this.request("POST", "/v1/devices/register",
      JSON.stringify({ enrollment_token: enrollmentToken, ...device }), {}, false);
    const data = toPlain(body) as { device_id?: unknown; credential?: unknown; state?: unknown };
    return { deviceId: field(data.device_id, "device_id"), credential: field(data.credential, "credential"),
      pending: data.state === "pending" };
  }

  /** A new credential for this device; the current one stays valid until the new one is used (§2.5). */
  async rotateCredential(deviceId: string): Promise<string> {
    const [, body] = await this.request("POST", devicePath(deviceId, "credential"));
    return field((toPlain(body) as { credential?: unknown }).credential, "credential");
  }

  /**
   * The assignment, or `null` when unchanged since `etag` (304); with the ETag to send next.
   * `exclude` names variants of release `excludeVersion` this device refused: the server then
   * offers the next-best variant of that release (§3.1).
   */
  async assignment(deviceId: string, model: string, etag: string | null, excludeVersion: string | null = null,
                   exclude: readonly string[] = []): Promise<[Assignment | null, string | null]> {
    const headers: Record<string, string> = etag ? { "If-None-Match": `"${etag}"` } : {};
    let query = `model=${encodeURIComponent(model)}`;
    if (exclude.length && excludeVersion !== null) {
      query += `&exclude_version=${encodeURIComponent(excludeVersion)}`;
      for (const id of exclude) query += `&exclude=${encodeURIComponent(id)}`;
    }
    const [response, body] = await this.request("GET", devicePath(deviceId, `assignment?${query}`), undefined, headers);
    this.rotationRequested = (response.header(ROTATE_HEADER) ?? "").trim() === "1";
    if (response.status === 304) return [null, etag];
    const newEtag = (response.header("ETag") ?? "").replace(/^"|"$/g, "") || null;
    return [assignmentOf(body), newEtag];
  }

  /** Tell the server which runtimes this device loads now (they changed since registration, §3.7). */
  async updateRuntimes(deviceId: string, runtimes: Record<string, string>): Promise<void> {
    await this.request("PUT", devicePath(deviceId, "runtimes"), JSON.stringify({ runtimes }));
  }

  /** Send a batch; the ids the server now holds (accepted now or before). */
  async postReports(reports: readonly object[]): Promise<Set<string>> {
    const [, body] = await this.request("POST", "/v1/reports", JSON.stringify({ reports }));
    const data = toPlain(body) as { accepted?: unknown; duplicates?: unknown };
    const ids = [data.accepted, data.duplicates].flatMap((v) => (Array.isArray(v) ? v : []));
    return new Set(ids.filter((id): id is string => typeof id === "string"));
  }

  private async request(method: "GET" | "POST" | "PUT", path: string, body?: string, headers: Record<string, string> = {},
                        auth = true): Promise<[HttpResponse, JsonValue]> {
    const url = this.url(path);
    const all: Record<string, string> = { Accept: "application/json", ...headers, ...(auth ? this.authHeaders(url) : {}) };
    if (body !== undefined) all["Content-Type"] = "application/json";
    let response: HttpResponse;
    let text: string;
    try {
      const request = { method, url, headers: all, timeoutMs: this.timeoutMs, followRedirects: method === "GET" };
      response = await this.http.request(body === undefined ? request : { ...request, body });
      text = response.status === 304 ? "" : await response.text();
    } catch (err) {
      throw new ServerUnavailable(`${method} ${path}: ${firstLine(err)}`);
    }
    const status = response.status;
    if (status === 304) return [response, null];
    if (status >= 200 && status < 300) {
      try {
        return [response, text ? parseJson(text) : Object.create(null)];
      } catch (err) {
        throw new ServerUnavailable(`${method} ${path}: answer is not JSON (${firstLine(err)})`);
      }
    }
    const [message, error] = httpError(status, text);
    const retryAfter = retryAfterSeconds(response.header("Retry-After"), this.nowMs());
    if (retriable(status) || status < 400) throw new ServerUnavailable(`${method} ${path}: ${message}`, retryAfter);
    throw new ServerRejected(`${method} ${path}: ${message}`, status, error, retryAfter);
  }
}

const devicePath = (deviceId: string, rest: string): string => `/v1/devices/${encodeURIComponent(deviceId)}/${rest}`;

/** A string field of an answer; an answer without it is the server's fault (retry later). */
function field(value: unknown, name: string): string {
  check(typeof value === "string", `answer lacks ${name}`, ServerUnavailable);
  return value;
}

function assignmentOf(body: JsonValue): Assignment {
  check(isJsonObject(body), "assignment is not an object", ServerUnavailable);
  const plain = toPlain(body) as Assignment & { shadow?: { manifest: JsonValue } };
  plain.manifest = body["manifest"] ?? null;
  const shadow = body["shadow"];
  if (plain.shadow && isJsonObject(shadow)) plain.shadow.manifest = shadow["manifest"] ?? null;
  return plain;
}

/** the longest `Retry-After` honoured (a day), as the reference agent */
export const MAX_RETRY_AFTER_SECONDS = 86_400;

/** `Retry-After` as seconds (delta-seconds or an HTTP date), at most a day; undefined when absent or unreadable. */
export function retryAfterSeconds(value: string | null, nowMs: number): number | undefined {
  const text = (value ?? "").trim();
  if (!text) return undefined;
  if (/^\d+$/.test(text)) return Math.min(Number(text), MAX_RETRY_AFTER_SECONDS);
  if (!/GMT$/.test(text)) return undefined; // an HTTP-date is GMT
  const date = Date.parse(text);
  return Number.isNaN(date) ? undefined : Math.min(Math.max(0, (date - nowMs) / 1000), MAX_RETRY_AFTER_SECONDS);
}

function originOf(url: string): string {
  const match = /^([a-z][a-z0-9+.-]*:\/\/[^/?#]*)/i.exec(url);
  return match ? match[1]!.toLowerCase() : "";
}
