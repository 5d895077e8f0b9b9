/**
 * An in-memory rollout server behind the {@link Http} interface, for unit tests: registration,
 * assignment with ETag, artifacts with Range, reports deduplicated per device, revocation —
 * and faults a test injects (network errors, answers lost after the server acted, statuses).
 */

import type { Http, HttpRequest, HttpResponse } from "../../src/adapters.js";
import { sha256Hex, utf8Encode } from "../../src/bytes.js";
import type { Report } from "../../src/window.js";
import type { TestRelease } from "./release.js";

export interface Fault {
  match: (request: HttpRequest) => boolean;
  /** `network`: nothing reaches the server; `lose-answer`: the server acts, the answer is lost */
  kind: "network" | "lose-answer" | { status: number; headers?: Record<string, string>; body?: unknown };
}

interface Device {
  id: string;
  credential: string;
  /** `revoked`, or `rejected` / `pending` (waiting for an operator) */
  revoked: boolean;
  state?: "pending" | "rejected";
  /** the credential before the last rotation, accepted until the new one is used */
  previous?: string;
  registration: Record<string, unknown>;
  reports: Map<string, Report>;
}

export class FakeServer implements Http {
  readonly enrollTokens = new Set(["es_enroll"]);
  readonly devices = new Map<string, Device>();
  readonly releases = new Map<string, TestRelease>();
  readonly artifacts = new Map<string, Uint8Array>();
  readonly requests: HttpRequest[] = [];
  readonly faults: Fault[] = [];
  stable: string | null = null;
  cohort: "stable" | "canary" = "stable";
  rolloutId: number | null = null;
  reportIntervalSeconds = 30;
  /** artifact transfers end (as a network error) after this many bytes, while set */
  cutAfterBytes: number | null = null;
  down = false;
  /** new devices start pending (an operator must accept them) */
  admission: "auto" | "manual" = "auto";
  /** assignment answers carry Edgeship-Rotate-Credential: 1 */
  rotateHint = false;
  /** a shadow rollout: stable devices get this release as their `shadow` block */
  shadow: { version: string; sampleShare?: number } | null = null;

  publish(release: TestRelease): void {
    this.releases.set(release.version, release);
    for (const [sha, bytes] of release.files) this.artifacts.set(sha, bytes);
  }

  /** Every stored report of every device. */
  reports(): Report[] {
    return [...this.devices.values()].flatMap((d) => [...d.reports.values()]);
  }

  async request(request: HttpRequest): Promise<HttpResponse> {
    this.requests.push(request);
    if (this.down) throw new TypeError("fetch failed: connection refused");
    const fault = this.faults.find((f) => f.match(request));
    if (fault) this.faults.splice(this.faults.indexOf(fault), 1);
    if (fault?.kind === "network") throw new TypeError("fetch failed: connection reset");
    if (fault && typeof fault.kind === "object") {
      return respond(fault.kind.status, fault.kind.body ?? { error: "fault", detail: "injected" }, fault.kind.headers);
    }
    const response = this.route(request);
    if (fault?.kind === "lose-answer") throw new TypeError("fetch failed: socket hang up");
    return response;
  }

  private route(request: HttpRequest): HttpResponse {
    const url = new URL(request.url);
    const path = url.pathname;
    if (request.method === "POST" && path === "/v1/devices/register") return this.register(request);
    const auth = (request.headers["Authorization"] ?? "").replace(/^Bearer /, "");
    const device = [...this.devices.values()].find((d) => d.credential === auth || d.previous === auth);
    if (device === undefined) return respond(401, { error: "unauthorized", detail: "unknown credential" });
    if (device.credential === auth) delete device.previous; // the new credential is in use: the old one ends
    if (device.revoked) return respond(401, { error: "device_revoked", detail: "this device was revoked" });
    if (device.state === "rejected") return respond(401, { error: "device_rejected", detail: "rejected" });
    if (device.state === "pending") {
      return respond(403, { error: "device_pending", detail: "waiting for an operator" }, { "Retry-After": "30" });
    }
    const rotate = /^\/v1\/devices\/([^/]+)\/credential$/.exec(path);
    if (request.method === "POST" && rotate) {
      device.previous = auth;
      device.credential = `${auth}_rotated`;
      return respond(201, { device_id: device.id, credential: device.credential });
    }
    const assignment = /^\/v1\/devices\/([^/]+)\/assignment$/.exec(path);
    if (request.method === "GET" && assignment) {
      if (decodeURIComponent(assignment[1]!) !== device.id) return respond(403, { error: "forbidden", detail: "" });
      return this.assignment(request);
    }
    const artifact = /^\/v1\/artifacts\/([0-9a-f]{64})$/.exec(path);
    if (request.method === "GET" && artifact) return this.artifact(request, artifact[1]!);
    if (request.method === "POST" && path === "/v1/reports") return this.postReports(request, device);
    const runtimes = /^\/v1\/devices\/([^/]+)\/runtimes$/.exec(path);
    if (request.method === "PUT" && runtimes) {
      const body = JSON.parse(request.body ?? "{}") as { runtimes?: unknown };
      if (typeof body.runtimes !== "object" || body.runtimes === null) return respond(400, { error: "bad_request", detail: "runtimes" });
      device.registration = { ...device.registration, runtimes: body.runtimes };
      return respond(200, { device_id: device.id, runtimes: body.runtimes });
    }
    return respond(404, { error: "not_found", detail: path });
  }

  private register(request: HttpRequest): HttpResponse {
    const body = JSON.parse(request.body ?? "{}") as Record<string, unknown>;
    if (!this.enrollTokens.has(body["enrollment_token"] as string)) {
      return respond(401, { error: "unauthorized", detail: "unknown or revoked enrollment token" });
    }
    const n = this.devices.size + 1;
    const device: Device = { id: `device-${n}`, credential: `es_device_${n}`, revoked: false, registration: body,
      reports: new Map(), ...(this.admission === "manual" ? { state: "pending" as const } : {}) };
    this.devices.set(device.id, device);
    return respond(201, { device_id: device.id, credential: device.credential, state: device.state ?? "active" });
  }

  private assignment(request: HttpRequest): HttpResponse {
    const release = this.stable === null ? undefined : this.releases.get(this.stable);
    if (release === undefined) return respond(404, { error: "not_found", detail: "no stable release" });
    const url = new URL(request.url);
    const excluded = url.searchParams.get("exclude_version") === release.version ? url.searchParams.getAll("exclude") : [];
    const variant = release.variants.find((v) => !excluded.includes(v.id));
    if (variant === undefined) return respond(409, { error: "no_variant", detail: `all excluded: ${excluded}` });
    const fields: Record<string, unknown> = {
      artifact_url: `/v1/artifacts/${variant.sha256}`, cohort: this.cohort,
      golden_url: `/v1/artifacts/${release.golden.sha256}`, model: "digits-cnn",
      report_interval_seconds: this.reportIntervalSeconds, rollout_id: this.rolloutId,
      variant: { ...variant, io: null }, version: release.version,
    };
    const candidate = this.shadow && this.cohort === "stable" ? this.releases.get(this.shadow.version) : undefined;
    let shadowText = "";
    if (candidate !== undefined) {
      const block = {
        artifact_url: `/v1/artifacts/${candidate.variant.sha256}`, golden_url: `/v1/artifacts/${candidate.golden.sha256}`,
        sample_share: this.shadow!.sampleShare ?? 0.1, sha256: candidate.variant.sha256,
        variant: { ...candidate.variant, io: null }, variant_id: candidate.variant.id, version: candidate.version,
      };
      shadowText = `,"shadow":${JSON.stringify(block).replace(/^\{/, `{"manifest":${candidate.manifestText},`)}`;
    }
    // the manifest goes in as signed text, as the server embeds it (number lexemes kept)
    const text = JSON.stringify(fields).replace(/^\{/, `{"manifest":${release.manifestText},`).replace(/\}$/, `${shadowText}}`);
    const etag = sha256Hex(utf8Encode(text)).slice(0, 32);
    const headers: Record<string, string> = { ETag: `"${etag}"`, ...(this.rotateHint ? { "Edgeship-Rotate-Credential": "1" } : {}) };
    if ((request.headers["If-None-Match"] ?? "") === `"${etag}"`) return respond(304, null, headers);
    return respondText(200, text, headers);
  }

  private artifact(request: HttpRequest, sha: string): HttpResponse {
    const bytes = this.artifacts.get(sha);
    if (bytes === undefined) return respond(404, { error: "not_found", detail: "no such artifact" });
    const range = request.headers["Range"];
    let start = 0;
    if (range !== undefined) {
      const match = /^bytes=(\d+)-$/.exec(range);
      if (match === null || Number(match[1]) >= bytes.length) {
        return respond(416, { error: "range_not_satisfiable", detail: range }, { "Content-Range": `bytes */${bytes.length}` });
      }
      start = Number(match[1]);
    }
    const part = bytes.subarray(start);
    const headers: Record<string, string> = { "Content-Length": String(part.length) };
    if (range !== undefined) headers["Content-Range"] = `bytes ${start}-${bytes.length - 1}/${bytes.length}`;
    const cut = this.cutAfterBytes;
    return {
      status: range !== undefined ? 206 : 200,
      header: (name) => lookup(headers, name),
      text: async () => new TextDecoder().decode(part),
      async *chunks() {
        for (let at = 0; at < part.length; at += 7) {
          if (cut !== null && at >= cut) throw new TypeError("terminated: other side closed");
          yield part.slice(at, Math.min(at + 7, part.length, cut ?? Infinity));
        }
      },
      cancel: async () => {},
    };
  }

  private postReports(request: HttpRequest, device: Device): HttpResponse {
    if (request.headers["Content-Type"] !== "application/json") return respond(400, { error: "bad_request", detail: "json" });
    const { reports } = JSON.parse(request.body ?? "{}") as { reports: Report[] };
    if (!Array.isArray(reports) || reports.length < 1 || reports.length > 100) {
      return respond(400, { error: "bad_request", detail: "reports must hold 1 to 100 reports" });
    }
    const bad = reports.findIndex((r) => r.schema !== 2 || typeof r.id !== "string");
    if (bad >= 0) return respond(400, { error: "bad_request", detail: `reports[${bad}]: invalid` });
    const accepted: string[] = [];
    const duplicates: string[] = [];
    for (const report of reports) {
      if (device.reports.has(report.id)) duplicates.push(report.id);
      else {
        device.reports.set(report.id, report);
        accepted.push(report.id);
      }
    }
    return respond(200, { accepted, duplicates: duplicates.sort() });
  }
}

function lookup(headers: Record<string, string>, name: string): string | null {
  const key = Object.keys(headers).find((k) => k.toLowerCase() === name.toLowerCase());
  return key === undefined ? null : headers[key]!;
}

function respond(status: number, body: unknown, headers: Record<string, string> = {}): HttpResponse {
  return respondText(status, body === null ? "" : JSON.stringify(body), headers);
}

function respondText(status: number, text: string, headers: Record<string, string> = {}): HttpResponse {
  return {
    status,
    header: (name) => lookup(headers, name),
    text: async () => text,
    async *chunks() {
      yield utf8Encode(text);
    },
    cancel: async () => {},
  };
}
