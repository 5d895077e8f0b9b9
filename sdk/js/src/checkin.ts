/**
 * The check-in (docs/protocol.md §3, §7; reference `Agent.check_in` / `_apply` in
 * `edge_agent/agent.py`): register when needed (or re-announce the runtimes once per start when
 * they changed, §3.7), ask for the assignment with ETag, install what it names if the device does
 * not run it yet (refusals reported and backed off, then the next-best variant of the same release
 * asked for at once with `exclude`, §7.4), load a shadow candidate (§7.3), point the measurements
 * at the assignment's rollout and cohort, and react to 401 / 403 / 5xx.
 */

import type { AgentOptions, LogLevel } from "./options.js";
import type { Active } from "./agent.js";
import type { Assignment, ServerApi } from "./api.js";
import { Backoff, type VariantBackoff } from "./backoff.js";
import type { DeliveryHooks } from "./delivery.js";
import { DownloadError, firstLine, isUnauthorized, ModelRefused, ServerRejected, ServerUnavailable } from "./errors.js";
import type { AnnouncedRuntimes, Identity, Revocation } from "./identity.js";
import type { Installer } from "./installer.js";
import type { LoadedModel } from "./model.js";
import { announcedRuntimes } from "./runtime.js";
import { RefusedVariants, releaseVariantKey } from "./refusals.js";
import type { ShadowRunner } from "./shadow.js";
import { isoUtc, sameKey, type WindowKey, type WindowSet } from "./window.js";
import type { Clock } from "./adapters.js";

export const DEVICE_REVOKED = "device_revoked";
/** refused by an operator while pending: final, like a revocation */
export const DEVICE_REJECTED = "device_rejected";
/** registered, waiting for an operator to accept it: ask again after `Retry-After` */
export const DEVICE_PENDING = "device_pending";
/** 403 at registration: the enrollment token does not enroll this device class */
export const ENROLLMENT_SCOPE = "enrollment_scope";
/** the server's `error` when no variant of the release runs on this device (or none but those it excluded) */
export const NO_VARIANT = "no_variant";
/** assignment polls in one check-in while variants of the release are refused */
export const MAX_VARIANT_TRIES = 8;
const PENDING_RETRY_SECONDS = 60;
const REVOKED = "revoked: needs a new enrollToken";
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
  /** the shadow candidate (§7.3), shared with `predict` */
  shadow: ShadowRunner<T>;
  /** the runtimes the server last took for this device, kept across starts */
  announced: AnnouncedRuntimes;
  getActive(): Active<T> | null;
  setActive(active: Active<T>): void;
  log(level: LogLevel, message: string): void;
}

export class CheckIn<T> implements DeliveryHooks {
  /** monotonic ms before which the server is not asked anything (backoff) */
  retryAt = 0;
  reportIntervalMs: number;
  revoked = false;
  /** the server last said this device waits for an operator */
  pending = false;
  private rotateAfter = 0;
  private etag: string | null = null;
  private assignment: Assignment | null = null;
  private inflight: Promise<void> | null = null;
  private registering: Promise<void> | null = null;
  private readonly refusals: RefusedVariants;
  /** a variant was refused in this check-in: ask for the next one */
  private refusedNow = false;
  /** the last "no variant left" logged, so it is logged once, not at every poll of the backoff */
  private exhausted: string | null = null;
  /** the server holds this run's runtimes (checked once per start) */
  private runtimesSent = false;
  private runtimesRetryAt = 0;
  private readonly runtimesBackoff: Backoff;

  constructor(private readonly p: CheckInParts<T>) {
    this.reportIntervalMs = p.options.reportIntervalMs ?? 30_000;
    this.refusals = new RefusedVariants(p.variantBackoff);
    this.runtimesBackoff = new Backoff(p.options.backoffInitialSeconds, p.options.backoffMaxSeconds, p.options.random);
  }

  private get now(): number {
    return this.p.options.clock.monotonicMs();
  }

  log(level: LogLevel, message: string): void {
    this.p.log(level, message);
  }

  /** No more traffic: revoked or rejected by an operator. */
  stopped(): boolean {
    return this.revoked;
  }

  /** Leave the server alone for `seconds` (returned). */
  private retryIn(seconds: number): number {
    this.retryAt = this.now + seconds * 1000;
    return seconds;
  }

  /** Restore the store's model; a device revoked before (same token) does not talk to the server. */
  async restore(): Promise<void> {
    const restored = await this.p.installer.restore();
    if (restored !== null) {
      const [model] = restored;
      this.p.setActive({ model, key: keyOf(model.release, null, "stable") });
    }
    if (this.p.identity.current === null && (await this.p.revocation.blocks(this.p.options.enrollToken ?? null))) {
      this.revoked = true;
      this.log("error", REVOKED);
    }
  }

  /** One check-in; a second call while one runs shares it. Never throws. */
  async checkIn(): Promise<void> {
    if (this.revoked) return;
    await (this.inflight ??= this.tries().catch((err: unknown) => this.stepFailed(err)).finally(() => {
      this.inflight = null;
    }));
  }

  /** Resolves when no check-in runs. */
  async idle(): Promise<void> {
    await this.inflight;
  }

  /** An unexpected failure of a loop step: logged, and the server left alone for a backoff. */
  stepFailed(err: unknown): void {
    this.log("error", `step failed: ${firstLine(err)}`);
    this.retryIn(this.p.serverBackoff.failure());
  }

  /**
   * Poll and apply; when the assigned variant is refused, poll again at once naming it (and the
   * release's other refused variants): the server offers the next-best variant of the same
   * release, until none is left (409 `no_variant`) and the variant backoff decides when to retry.
   */
  private async tries(): Promise<void> {
    for (let i = 0; i < MAX_VARIANT_TRIES; i++) {
      this.refusedNow = false;
      await this.run();
      if (!this.refusedNow || this.revoked) return;
    }
  }

  private async run(): Promise<void> {
    const version = this.assignment !== null ? String(this.assignment.version) : null;
    const excluded = this.refusals.excluded(version, this.now);
    try {
      await this.ensureRegistered();
      const deviceId = this.p.identity.current!.deviceId;
      const [body, etag] = await this.p.api.assignment(deviceId, this.p.options.model, this.etag, version, excluded);
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
      if (err.error === NO_VARIANT && excluded.length) {
        const what = `v${version} (${excluded.join(", ")} refused)`;
        if (what !== this.exhausted) this.log("warn", `no variant of ${what} left`);
        this.exhausted = what;
        return;
      }
      this.log("warn", `assignment refused: ${err.message}`);
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
        throw new ServerRejected(REVOKED, 401, DEVICE_REVOKED);
      }
      if (!token) throw new ServerRejected("not registered and no enrollToken", 401);
      const { device } = options;
      const runtimes = announcedRuntimes(options.runtime);
      const registration = await api.register(token, {
        device_class: device.deviceClass, arch: device.arch || "unknown", os: device.os || "unknown",
        ram_bytes: device.ramBytes ?? 0, runtimes,
        ...(options.attributes ? { attributes: { ...options.attributes } } : {}),
      });
      await identity.save(registration);
      this.runtimesSent = true;
      await this.recordRuntimes(registration.deviceId, runtimes);
      await this.p.revocation.clear();
      this.log("info", `registered as ${registration.deviceId}${registration.pending ? ", pending" : ""}`);
    }
    api.credential = identity.current!.credential;
    if (!this.runtimesSent) await this.sendRuntimes();
  }

  /**
   * Once per start, tell the server what this device loads now if it differs from what the
   * server last took (the app updated onnxruntime, or changed its runtime; §3.7). Never in the
   * way of the assignment: a server that does not take them now is asked again later, backed off.
   */
  private async sendRuntimes(): Promise<void> {
    if (this.now < this.runtimesRetryAt) return;
    const deviceId = this.p.identity.current!.deviceId;
    const runtimes = announcedRuntimes(this.p.options.runtime);
    if (await this.p.announced.holds(deviceId, runtimes)) {
      this.runtimesSent = true;
      return;
    }
    try {
      await this.p.api.updateRuntimes(deviceId, runtimes);
    } catch (err) {
      if (err instanceof ServerUnavailable) {
        this.runtimesRetryAt = this.now + this.runtimesBackoff.failure(err.retryAfterSeconds) * 1000;
      } else if (!(err instanceof ServerRejected) || isUnauthorized(err)) {
        throw err;
      } else {
        this.runtimesSent = true; // not taken (4xx): the server keeps those it has
      }
      this.log("warn", `runtimes not updated: ${err.message}`);
      return;
    }
    this.runtimesSent = true;
    this.log("info", `runtimes updated: ${JSON.stringify(runtimes)}`);
    await this.recordRuntimes(deviceId, runtimes);
  }

  private recordRuntimes(deviceId: string, runtimes: Record<string, string>): Promise<void> {
    return this.p.announced.record(deviceId, runtimes).catch((err: unknown) => this.log("warn", firstLine(err)));
  }

  serverAway(err: ServerUnavailable): void {
    const delay = this.retryIn(this.p.serverBackoff.failure(err.retryAfterSeconds));
    this.log("warn", `server away (${err.message}); retry in ${delay.toFixed(1)} s`);
  }

  /** A 401: revoked (stop for good), or a credential / token not accepted (register again after a backoff). */
  async unauthorized(err: ServerRejected): Promise<void> {
    const { identity, api, options } = this.p;
    if (err.error === DEVICE_REVOKED || err.error === DEVICE_REJECTED) {
      if (this.revoked) return;
      this.revoked = true;
      api.credential = null;
      await this.p.revocation.record(identity.current?.deviceId ?? null, options.enrollToken ?? null, err.message,
        isoUtc(options.clock.nowMs()));
      await identity.forget();
      this.log("error", `${err.error} (${err.message}): stopping until a new enrollToken`);
      return;
    }
    const delay = this.retryIn(this.p.serverBackoff.failure());
    if (identity.current === null) {
      this.log("error", `cannot register (${err.message}); retry in ${delay.toFixed(1)} s`);
      return;
    }
    this.log("warn", `credential refused (${err.message}); registering again`);
    api.credential = null;
    await identity.forget();
  }

  /** 403 `device_pending`: keep the identity (registering again only adds a pending device), ask again later. */
  private waiting(err: ServerRejected): void {
    const interval = (this.p.options.checkIntervalMs ?? 10_000) / 1000;
    const delay = this.retryIn(Math.max(err.retryAfterSeconds ?? PENDING_RETRY_SECONDS, interval));
    if (!this.pending) this.log("warn", `pending an operator; asking every ${delay} s`);
    this.pending = true;
  }

  private accepted(): void {
    if (this.pending) this.log("info", "accepted");
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
      if (isUnauthorized(err)) throw err;
      this.log("warn", `credential not rotated: ${firstLine(err)}`);
      return;
    }
    api.credential = credential;
    api.rotationRequested = false;
    this.log("info", "credential rotated");
  }

  private async apply(assignment: Assignment): Promise<void> {
    const assigned = keyOf(assignment, assignment.rollout_id ?? null, assignment.cohort);
    const active = this.p.getActive();
    if (active === null || !runs(active.model, assignment)) {
      const nowMs = this.now;
      if (!this.refusals.blocked(assignment, nowMs)) await this.install(assignment, assigned, nowMs);
    }
    this.rekey(assignment);
    const current = this.p.getActive();
    if (current !== null && assignment.cohort === "stable" && runs(current.model, assignment)) {
      await this.p.installer.confirmStable(current.model.release.sha256, this.p.shadow.blobs);
    }
    await this.applyShadow(assignment.shadow);
  }

  /** Load the shadow block's candidate beside the current model (never swapped in), or drop it. */
  private async applyShadow(block: Assignment["shadow"]): Promise<void> {
    const { shadow, variantBackoff } = this.p;
    if (block === undefined || block === null) {
      shadow.clear();
      return;
    }
    const sha = block.sha256 ?? block.variant?.sha256 ?? "";
    const key = releaseVariantKey(block);
    if (shadow.runs(sha) || variantBackoff.blocked(key, this.now)) return;
    let model: LoadedModel<T>;
    let entry;
    try {
      [model, entry] = await this.p.installer.install(block);
    } catch (err) { // only logged and backed off, never reported (§7.3)
      if (isUnauthorized(err)) throw err;
      variantBackoff.failed(key, this.now);
      this.log("warn", `shadow candidate ${block.variant?.id} not loaded: ${firstLine(err)}`);
      return;
    }
    const share = typeof block.sample_share === "number" ? block.sample_share : 0.1;
    shadow.set(model, share, Object.values(entry.blobs));
    this.log("info", `shadowing v${model.release.version} (${model.release.variant.id})`);
  }

  private async install(assignment: Assignment, assigned: WindowKey, nowMs: number): Promise<void> {
    this.log("info", `installing ${assigned.model} v${assigned.version} (${assigned.variant}, ${assigned.cohort})`);
    let model: LoadedModel<T>;
    let entry;
    try {
      [model, entry] = await this.p.installer.install(assignment);
    } catch (err) {
      if (err instanceof ModelRefused) {
        this.p.windows.recordError(assigned, err.reason);
        const until = this.refusals.refuse(assignment, nowMs);
        this.refusedNow = true;
        this.log("error", `refused v${assigned.version} (${assigned.variant}): ${err.message} [${err.reason}]; ` +
          `next variant, this one again in ${Math.round((until - nowMs) / 1000)} s`);
      } else if (err instanceof DownloadError) {
        this.log("warn", `download of v${assigned.version} cut (${err.message}); resuming later`);
      } else {
        this.log("error", `cannot install v${assigned.version}: ${firstLine(err)}`);
      }
      return;
    }
    await this.p.installer.commit(entry, this.p.shadow.blobs);
    this.p.setActive({ model, key: assigned });
    this.log("info", `now running ${assigned.model} v${assigned.version} (${assigned.variant})`);
  }

  /** Point the running model's measurements at the assignment's rollout; `stable` unless it is the assigned model. */
  private rekey(assignment: Assignment): void {
    const active = this.p.getActive();
    if (active === null) return;
    const cohort = runs(active.model, assignment) ? assignment.cohort : "stable";
    const key = keyOf(active.model.release, assignment.rollout_id ?? null, cohort);
    if (!sameKey(key, active.key)) this.p.setActive({ model: active.model, key });
  }
}

/** The window of a release (an assignment, or a loaded model's release) under a rollout and cohort. */
function keyOf(release: { model: string; version: string; variant: { id: string } }, rolloutId: number | null,
               cohort: "stable" | "canary"): WindowKey {
  return { model: release.model, version: release.version, variant: release.variant.id, rolloutId, cohort };
}

function runs<T>(model: LoadedModel<T>, assignment: Assignment): boolean {
  return model.release.version === assignment.version && model.release.sha256 === assignment.variant.sha256;
}
