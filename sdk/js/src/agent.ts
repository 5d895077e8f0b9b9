/**
 * The device agent an app embeds: keeps the assigned model running and reports how it does.
 *
 *     const agent = await EdgeshipAgent.start({ server, enrollToken, model: "digits-cnn",
 *       trustedKeys: [pem], storage, secureStore, runtime: onnxRuntime(ort) });
 *     await agent.ready();                                   // first model installed
 *     const out = await agent.predict({ image: tensor }, { label: 3 });
 *     agent.status(); await agent.stop();
 *
 * `predict` never waits for the network: the current model is one reference that a swap
 * replaces only with a model that is loaded and passed its golden probe. Check-ins (assignment
 * with ETag → install when it changed → swap) run on a timer gated by `canPoll`, or when the app
 * calls `checkIn()` (on foreground, say); windows close into the durable outbox every report
 * interval and are delivered with backoff. On 401 `device_revoked` / `device_rejected` the agent
 * stops talking to the server for good and forgets its credential (docs/protocol.md §2.4).
 */

import { cryptoRandomBytes, systemClock } from "./adapters.js";
import { ServerApi } from "./api.js";
import { Backoff, VariantBackoff } from "./backoff.js";
import { CheckIn } from "./checkin.js";
import { Delivery } from "./delivery.js";
import { check, firstLine, InferenceError, NoModel } from "./errors.js";
import { fetchHttp } from "./fetch-http.js";
import { AnnouncedRuntimes, Identity, Revocation } from "./identity.js";
import { Installer } from "./installer.js";
import { releaseModel, type LoadedModel } from "./model.js";
import { top1 } from "./fidelity.js";
import { checkOptions, type AgentOptions, type LogLevel } from "./options.js";
import { Outbox, OutboxError } from "./outbox.js";
import { ShadowRunner } from "./shadow.js";
import { trustedKeys } from "./signing.js";
import { ModelStore } from "./store.js";
import { newReportId, WindowSet, type Report, type WindowKey } from "./window.js";

export type { AgentOptions } from "./options.js";

/** The model answering `predict` and the window its measurements go to. */
export interface Active<T> {
  model: LoadedModel<T>;
  key: WindowKey;
}

export interface AgentStatus {
  deviceId: string | null;
  model: string | null;
  version: string | null;
  variant: string | null;
  cohort: string | null;
  rolloutId: number | null;
  /** reports waiting for delivery */
  outbox: number;
  /** revoked or rejected by an operator: no more traffic until a new enrollment token */
  revoked: boolean;
  /** registered and waiting for an operator to accept it */
  pending: boolean;
  /** the variant id of the shadow candidate running beside the model, null when none (§7.3) */
  shadow: string | null;
  stopped: boolean;
}

export class EdgeshipAgent<T> {
  /** the model answering `predict`; replaced whole by a swap */
  private active: Active<T> | null = null;
  private stopped = false;
  private timer: unknown = null;
  private nextCheckAt = 0;
  private windowOpenedAt = 0;
  private undelivered = true; // an earlier run may have left reports
  private readyWaiters: (() => void)[] = [];
  private ticking: Promise<void> = Promise.resolve();
  /** closed windows the outbox could not take (disk full), tried again at the next close */
  private unstored: Report[] = [];

  private constructor(
    readonly options: Required<Pick<AgentOptions<T>, "clock" | "http">> & AgentOptions<T>,
    readonly identity: Identity,
    readonly outbox: Outbox,
    readonly windows: WindowSet,
    readonly control: CheckIn<T>,
    private readonly delivery: Delivery,
    readonly shadow: ShadowRunner<T>,
  ) {}

  /**
   * Restore the last good model from storage, then start polling (unless `checkIntervalMs` is null).
   *
   * @throws RangeError for bad options (server URL, device class...), SigningError for a key that is not Ed25519.
   */
  static async start<T>(options: AgentOptions<T>): Promise<EdgeshipAgent<T>> {
    checkOptions(options);
    const keys = trustedKeys(options.trustedKeys);
    const clock = options.clock ?? systemClock;
    const http = options.http ?? fetchHttp();
    const full = { ...options, clock, http };
    const log = options.log ?? defaultLog;
    const nowMs = () => clock.nowMs();
    const info = (message: string) => log("info", message);
    // undefined options take each part's own default
    const api = new ServerApi(options.server, http, options.requestTimeoutMs, nowMs);
    const identity = await Identity.open(options.secureStore);
    const { storage, runtime, random } = options;
    const outbox = await Outbox.open(storage, {
      maxReports: options.outboxMaxReports, log: (m) => log("warn", m) });
    const randomBytes = options.randomBytes ?? cryptoRandomBytes;
    const windows = new WindowSet(nowMs, () => newReportId(randomBytes), options.peakRssBytes);
    const store = new ModelStore(storage, "models", info);
    const installer = new Installer<T>({
      api, http, storage, clock, store, keys, runtime,
      goldenSlack: options.goldenSlack ?? 0.1, maxBytes: options.downloadMaxBytes,
      deadlineMs: options.downloadDeadlineMs, log: info,
    });
    const shadow = new ShadowRunner<T>(windows, runtime, random,
      (err) => log("debug", `shadow: ${firstLine(err)}`));
    let agent: EdgeshipAgent<T> | undefined; // the check-in reaches the agent's model through these two
    const control = new CheckIn<T>({
      options: full, api, identity, installer, windows, revocation: new Revocation(storage),
      serverBackoff: new Backoff(options.backoffInitialSeconds, options.backoffMaxSeconds, random),
      variantBackoff: new VariantBackoff(options.variantBackoffMs),
      shadow, announced: new AnnouncedRuntimes(storage),
      getActive: () => agent!.active,
      setActive: (active) => agent!.swap(active),
      log,
    });
    const delivery = new Delivery(api, outbox, control);
    agent = new EdgeshipAgent<T>(full, identity, outbox, windows, control, delivery, shadow);
    await control.restore();
    agent.windowOpenedAt = clock.monotonicMs();
    if (!control.revoked) agent.schedule(0);
    return agent;
  }

  /** Resolves once a model answers `predict` (restored or installed). */
  async ready(): Promise<void> {
    if (this.active === null) await new Promise<void>((resolve) => this.readyWaiters.push(resolve));
  }

  /**
   * Run the current model; outputs by name. Latency (of the runtime call) and, with `label`,
   * correctness (classification) are counted in the current window.
   *
   * @throws NoModel no model yet; InferenceError the runtime failed (counted as `runtime_error`).
   */
  async predict(feeds: Record<string, T>, options?: { label?: number | bigint | readonly (number | bigint)[] }):
      Promise<Record<string, T>> {
    const active = this.active;
    check(active !== null, "no model loaded yet", NoModel);
    const { model, key } = active;
    const clock = this.options.clock;
    const started = clock.monotonicMs();
    let outputs: Record<string, T>;
    try {
      outputs = await model.session.run(feeds);
    } catch (err) {
      this.windows.recordError(key, "runtime_error");
      throw new InferenceError(`${model.release.variant.id}: ${(err as Error).message ?? err}`);
    }
    this.windows.recordInference(key, Math.max(0, clock.monotonicMs() - started) / 1000);
    if (this.shadow.model !== null) this.shadow.submit(key, feeds, outputs, model.outputNames[0]!);
    const label = options?.label;
    const first = outputs[model.outputNames[0]!];
    if (label !== undefined && model.classification && first !== undefined) {
      const predicted = top1(this.options.runtime.read(first));
      const labels = (Array.isArray(label) ? label : [label]) as (number | bigint)[];
      predicted.forEach((p, i) => {
        if (i < labels.length) this.windows.recordLabelled(key, p === Number(labels[i]));
      });
    }
    return outputs;
  }

  /** Ask for the assignment now and act on it (e.g. when the app comes to the foreground). */
  checkIn(): Promise<void> {
    return this.control.checkIn();
  }

  /**
   * Close the reporting windows into the outbox. If storage cannot take them (disk full) they
   * wait in memory, up to the outbox's bound, and what is beyond is counted as dropped.
   */
  async closeWindow(): Promise<void> {
    const reports = [...this.unstored, ...this.withLoadTime(this.windows.close())];
    if (!reports.length) return;
    try {
      await this.outbox.add(reports);
      this.unstored = [];
    } catch (err) {
      if (!(err instanceof OutboxError)) throw err;
      this.unstored = reports.slice(-this.outbox.maxReports);
      await this.outbox.noteDropped(reports.length - this.unstored.length).catch(() => {});
      (this.options.log ?? defaultLog)("error", `${err.message}; ${this.unstored.length} reports kept in memory`);
    }
  }

  /** Deliver queued reports; false when some are left (server away). */
  deliver(): Promise<boolean> {
    return this.delivery.deliver();
  }

  status(): AgentStatus {
    const release = this.active?.model.release;
    const key = this.active?.key;
    return {
      deviceId: this.identity.current?.deviceId ?? null,
      model: release?.model ?? null,
      version: release?.version ?? null,
      variant: release?.variant.id ?? null,
      cohort: key?.cohort ?? null,
      rolloutId: key?.rolloutId ?? null,
      outbox: this.outbox.length,
      revoked: this.control.revoked,
      pending: this.control.pending,
      shadow: this.shadow.model?.release.variant.id ?? null,
      stopped: this.stopped,
    };
  }

  /**
   * Stop polling, close the open windows into the outbox and try for `flushTimeoutMs` to
   * deliver them; what is left is sent after the next start. Then the model is released.
   */
  async stop(flushTimeoutMs = 5000): Promise<AgentStatus> {
    this.stopped = true;
    const clock = this.options.clock;
    if (this.timer !== null) clock.clearTimer(this.timer);
    // a running check-in (a download) and queued shadow comparisons get the flush time to finish, no more
    let waited: unknown = null;
    await Promise.race([Promise.all([this.control.idle(), this.shadow.idle()]), new Promise<void>((resolve) => {
      waited = clock.setTimer(resolve, flushTimeoutMs);
    })]);
    clock.clearTimer(waited);
    await this.closeWindow();
    const deadline = clock.monotonicMs() + flushTimeoutMs;
    while (this.outbox.length && clock.monotonicMs() < deadline && !this.control.revoked) {
      if (!(await this.delivery.flush())) break;
    }
    const status = this.status();
    const active = this.active;
    this.active = null;
    this.shadow.clear();
    if (active) await releaseModel(active.model);
    return status;
  }

  private swap(active: Active<T>): void {
    if (this.stopped) { // a check-in that finished after stop(): nothing serves any more
      if (active.model !== this.active?.model) void releaseModel(active.model);
      return;
    }
    const old = this.active;
    this.active = active; // one reference: predict sees the old model or the new one, whole
    if (old !== null && old.model !== active.model) {
      // in-flight predictions hold their own reference; give them time before freeing native memory
      this.options.clock.setTimer(() => void releaseModel(old.model), 10_000);
    }
    for (const resolve of this.readyWaiters.splice(0)) resolve();
  }

  /** The reports of the running model's windows carry how long it took to load. */
  private withLoadTime(reports: Report[]): Report[] {
    const model = this.active?.model;
    for (const report of reports) {
      if (model && report.model === model.release.model && report.version === model.release.version &&
          report.variant === model.release.variant.id) {
        report.load_seconds = Math.round(model.loadSeconds * 1e6) / 1e6;
      }
    }
    return reports;
  }

  /** The loop: one timer, at the earliest of the next check-in, window close and delivery retry. */
  private schedule(delayMs?: number): void {
    if (this.stopped || this.control.revoked) return;
    const clock = this.options.clock;
    const now = clock.monotonicMs();
    let wake = Math.min(this.windowOpenedAt + this.control.reportIntervalMs,
      this.options.checkIntervalMs === null ? Infinity : this.nextCheckAt);
    if (this.undelivered) wake = Math.min(wake, Math.max(this.control.retryAt, now + 50));
    if (this.timer !== null) clock.clearTimer(this.timer);
    this.timer = clock.setTimer(() => {
      this.ticking = this.tick();
    }, delayMs ?? Math.max(10, wake - now));
  }

  /** Resolves when the background work started so far (a loop step, a check-in) is done. */
  async settled(): Promise<void> {
    await this.ticking;
    await this.control.idle();
  }

  private async tick(): Promise<void> {
    this.timer = null;
    if (this.stopped) return;
    const clock = this.options.clock;
    const now = clock.monotonicMs();
    try {
      if (this.options.checkIntervalMs !== null && now >= this.nextCheckAt && now >= this.control.retryAt) {
        this.nextCheckAt = now + (this.options.checkIntervalMs ?? 10_000);
        if (await (this.options.canPoll ?? (() => true))()) {
          // in the background: a long download must not hold back windows and delivery
          void this.control.checkIn().then(() => this.schedule());
        }
      }
      if (now >= this.windowOpenedAt + this.control.reportIntervalMs) {
        this.windowOpenedAt = now;
        await this.closeWindow();
        this.undelivered = true;
      }
      if (this.undelivered && now >= this.control.retryAt) this.undelivered = !(await this.deliver());
    } catch (err) { // never let one bad step end the loop: the device must keep serving
      this.control.stepFailed(err);
    }
    this.schedule();
  }
}

function defaultLog(level: LogLevel, message: string): void {
  // apps get warnings and errors on the console unless they pass `log`
  if (level === "warn" || level === "error") console.warn(`edgeship: ${message}`);
}
