/**
 * The check-in (docs/protocol.md §3, §7; reference `Agent.check_in` / `_apply` in
 * `edge_agent/agent.py`): register when needed, ask for the assignment with ETag, install what
 * it names if the device does not run it yet (refusals reported and backed off), point the
 * measurements at the assignment's rollout and cohort, and react to 401 / 403 / 5xx.
 */

import type { AgentOptions, LogLevel } from "./options.js";
import type { Active } from "./agent.js";
import type { Assignment, ServerApi } from "./api.js";
import type { Backoff, VariantBackoff } from "./backoff.js";
import { DownloadError, firstLine, ModelRefused, ServerRejected, ServerUnavailable } from "./errors.js";
import type { Identity, Revocation } from "./identity.js";
import type { Installer } from "./installer.js";
import type { LoadedModel } from "./model.js";
import { isoUtc, sameKey, type WindowKey, type WindowSet } from "./window.js";
import type { Clock } from "./adapters.js";

export const DEVICE_REVOKED = "device_revoked";
/** refused by an operator while pending: final, like a revocation */
export const DEVICE_REJECTED = "device_rejected";
/** registered, waiting for an operator to accept it: ask again after `Retry-After` */
export const DEVICE_PENDING = "device_pending";
/** 403 at registration: the enrollment token does not enroll this device class */
export const ENROLLMENT_SCOPE = "enrollment_scope";
const PENDING_RETRY_SECONDS = 60;
const ROTATE_RETRY_MS = 300_000;

export interface CheckInParts<T> {
  options: AgentOptions<T> & { clock: Clock };
  api: ServerApi;
  identity: Identity;
  revocation: Revocation;
  installer: Installer<T>;
  windows: WindowSet;
  serverBackoff: Backoff;
  variantBackoff: VariantBackoff;
  getActive(): Active<T> | null;
  setActive(active: Active<T>): void;
  log(level: LogLevel, message: string): void;
}

export class CheckIn<T> {
  /** monotonic ms before which the server is not asked anything (backoff) */
  retryAt = 0;
  reportIntervalMs: number;
  revoked = false;
  /** how the server refused this device once `revoked`: `device_revoked` or `device_rejected` */
  refusedBy: string | null = null;
  /** the server last said this device waits for an operator */
  pending = false;
  private rotateAfter = 0;
  private etag: string | null = null;
  private assignment: Assignment | null = null;
  private inflight: Promise<void> | null = null;
  private registering: Promise<void> | null = null;

  constructor(private readonly p: CheckInParts<T>) {
    this.reportIntervalMs = p.options.reportIntervalMs ?? 30_000;
  }

  private get now(): number {
    return this.p.options.clock.monotonicMs();
  }

  /** Restore the store's model; a device revoked before (same token) does not talk to the server. */
  async restore(): Promise<void> {
    const restored = await this.p.installer.restore();
    if (restored !== null) {
      const [model] = restored;
      this.p.setActive({ model, key: keyOf(model, null, "stable") });
    }
    if (this.p.identity.current === null && (await this.p.revocation.blocks(this.p.options.enrollToken ?? null))) {
      this.revoked = true;
      this.p.log("error", "this device was revoked by an operator: not enrolling again with the same enrollment token");
    }
  }

  /** One check-in; a second call while one runs shares it. Never throws. */
  checkIn(): Promise<void> {
    if (this.revoked) return Promise.resolve();
    this.inflight ??= this.run().catch((err: unknown) => this.stepFailed(err)).finally(() => {
      this.inflight = null;
    });
    return this.inflight;
  }

  /** Resolves when no check-in runs. */
  async idle(): Promise<void> {
    await this.inflight;
  }

  /** An unexpected failure of a loop step: logged, and the server left alone for a backoff. */
  stepFailed(err: unknown): void {
    this.p.log("error", `agent step failed (${firstLine(err)}); retrying later`);
    this.retryAt = this.now + this.p.serverBackoff.failure() * 1000;
  }

  private async run(): Promise<void> {
    try {
      await this.ensureRegistered();
      const deviceId = this.p.identity.current!.deviceId;
      const [body, etag] = await this.p.api.assignment(deviceId, this.p.options.model, this.etag);
      this.etag = etag;
      if (body !== null) {
        this.assignment = body;
        const interval = body.report_interval_seconds;
        if (typeof interval === "number" && interval > 0) this.reportIntervalMs = interval * 1000;
      }
      this.p.serverBackoff.success();
      this.accepted();
      if (this.p.api.rotationRequested) await this.rotateCredential();
    } catch (err) {
      if (err instanceof ServerUnavailable) return this.serverAway(err);
      if (!(err instanceof ServerRejected)) throw err;
      if (err.status === 401 || err.error === ENROLLMENT_SCOPE) return this.unauthorized(err);
      if (err.error === DEVICE_PENDING) return this.waiting(err);
      this.p.log("warn", `assignment refused: ${err.message}`);
      return;
    }
    if (this.assignment !== null) await this.apply(this.assignment);
  }

  /** Register once (concurrent callers share the request) and hand the credential to the API. */
  ensureRegistered(): Promise<void> {
    this.registering ??= this.register().finally(() => {
      this.registering = null;
    });
    return this.registering;
  }

  private async register(): Promise<void> {
    const { identity, options, api } = this.p;
    if (identity.current === null) {
      const token = options.enrollToken ?? null;
      if (await this.p.revocation.blocks(token)) {
        throw new ServerRejected("this device was revoked; it enrolls again only with a new enrollment token", 401,
          DEVICE_REVOKED);
      }
      if (!token) throw new ServerRejected("device is not registered and no enrollToken is configured", 401);
      const { device, runtime } = options;
      const registration = await api.register(token, {
        device_class: device.deviceClass, arch: device.arch || "unknown", os: device.os || "unknown",
        ram_bytes: device.ramBytes ?? 0, runtimes: { [runtime.name]: runtime.version },
      });
      await identity.save(registration);
      if (await this.p.revocation.exists()) await this.p.revocation.clear();
      this.p.log("info", `registered as device ${registration.deviceId} (${device.deviceClass})` +
        (registration.pending ? "; it waits for an operator to accept it" : ""));
    }
    api.credential = identity.current!.credential;
  }

  serverAway(err: ServerUnavailable): void {
    const delay = this.p.serverBackoff.failure(err.retryAfterSeconds);
    this.retryAt = this.now + delay * 1000;
    this.p.log("warn", `server unavailable (${err.message}); retrying in ${delay.toFixed(1)} s, still serving`);
  }

  /** A 401: revoked (stop for good), or a credential / token not accepted (register again after a backoff). */
  async unauthorized(err: ServerRejected): Promise<void> {
    const { identity, api, options } = this.p;
    if (err.error === DEVICE_REVOKED || err.error === DEVICE_REJECTED) {
      if (this.revoked) return;
      this.revoked = true;
      this.refusedBy = err.error;
      const deviceId = identity.current?.deviceId ?? null;
      api.credential = null;
      await this.p.revocation.record(deviceId, options.enrollToken ?? null, err.message, isoUtc(options.clock.nowMs()));
      await identity.forget();
      this.p.log("error", `device ${deviceId} was ${err.error === DEVICE_REJECTED ? "rejected" : "revoked"} by an ` +
        `operator (${err.message}): stopping, until given a new enrollment token`);
      return;
    }
    const delay = this.p.serverBackoff.failure();
    this.retryAt = this.now + delay * 1000;
    if (identity.current === null) {
      this.p.log("error", `cannot register (${err.message}); trying again in ${delay.toFixed(1)} s`);
      return;
    }
    this.p.log("warn", `the server does not accept this device's credential (${err.message}); registering again`);
    api.credential = null;
    await identity.forget();
  }

  /** 403 `device_pending`: keep the identity (registering again only adds a pending device), ask again later. */
  private waiting(err: ServerRejected): void {
    const interval = (this.p.options.checkIntervalMs ?? 10_000) / 1000;
    const delay = Math.max(err.retryAfterSeconds ?? PENDING_RETRY_SECONDS, interval);
    this.retryAt = this.now + delay * 1000;
    if (!this.pending) this.p.log("warn", `waiting for an operator to accept this device; asking again every ${delay} s`);
    this.pending = true;
  }

  private accepted(): void {
    if (this.pending) this.p.log("info", "an operator accepted this device");
    this.pending = false;
  }

  /**
   * The server asked for a new credential: get one, store it, then use it. A failure in between
   * leaves the old one, which the server accepts until the new one is first used (§2.5).
   */
  private async rotateCredential(): Promise<void> {
    const { api, identity } = this.p;
    if (this.now < this.rotateAfter || identity.current === null) return;
    this.rotateAfter = this.now + ROTATE_RETRY_MS;
    const { deviceId } = identity.current;
    let credential: string;
    try {
      credential = await api.rotateCredential(deviceId);
      await identity.save({ deviceId, credential });
    } catch (err) {
      if (err instanceof ServerRejected && err.status === 401) throw err;
      this.p.log("warn", `credential rotation not done (${firstLine(err)}); keeping the current credential`);
      return;
    }
    api.credential = credential;
    api.rotationRequested = false;
    this.p.log("info", `rotated the credential of device ${deviceId}`);
  }

  private async apply(assignment: Assignment): Promise<void> {
    const assigned: WindowKey = { model: assignment.model, version: assignment.version, variant: assignment.variant.id,
      rolloutId: assignment.rollout_id ?? null, cohort: assignment.cohort };
    const active = this.p.getActive();
    if (active === null || !runs(active.model, assignment)) {
      const key = `${assignment.version}:${assignment.variant.sha256}`;
      const nowMs = this.now;
      if (!this.p.variantBackoff.blocked(key, nowMs)) await this.install(assignment, assigned, key, nowMs);
    }
    this.rekey(assignment);
    const current = this.p.getActive();
    if (current !== null && assignment.cohort === "stable" && runs(current.model, assignment)) {
      await this.p.installer.confirmStable(current.model.release.sha256);
    }
  }

  private async install(assignment: Assignment, assigned: WindowKey, backoffKey: string, nowMs: number): Promise<void> {
    this.p.log("info", `installing ${assigned.model} v${assigned.version} (${assigned.variant}, ${assigned.cohort})`);
    let model: LoadedModel<T>;
    let entry;
    try {
      [model, entry] = await this.p.installer.install(assignment);
    } catch (err) {
      if (err instanceof ModelRefused) {
        this.p.windows.recordError(assigned, err.reason);
        const until = this.p.variantBackoff.failed(backoffKey, nowMs);
        this.p.log("error", `refused v${assigned.version}: ${err.message} [${err.reason}]; staying on the current ` +
          `model, not retrying for ${Math.round((until - nowMs) / 1000)} s`);
      } else if (err instanceof DownloadError) {
        this.p.log("warn", `download of v${assigned.version} interrupted (${err.message}); resuming at the next check-in`);
      } else {
        this.p.log("error", `cannot install v${assigned.version} (${firstLine(err)}); staying on the current model`);
      }
      return;
    }
    await this.p.installer.commit(entry);
    this.p.setActive({ model, key: assigned });
    this.p.log("info", `now running ${assigned.model} v${assigned.version} (${assigned.variant})`);
  }

  /** Point the running model's measurements at the assignment's rollout; `stable` unless it is the assigned model. */
  private rekey(assignment: Assignment): void {
    const active = this.p.getActive();
    if (active === null) return;
    const cohort = runs(active.model, assignment) ? assignment.cohort : "stable";
    const key = keyOf(active.model, assignment.rollout_id ?? null, cohort);
    if (!sameKey(key, active.key)) this.p.setActive({ model: active.model, key });
  }
}

function keyOf<T>(model: LoadedModel<T>, rolloutId: number | null, cohort: "stable" | "canary"): WindowKey {
  const { release } = model;
  return { model: release.model, version: release.version, variant: release.variant.id, rolloutId, cohort };
}

function runs<T>(model: LoadedModel<T>, assignment: Assignment): boolean {
  return model.release.version === assignment.version && model.release.sha256 === assignment.variant.sha256;
}
