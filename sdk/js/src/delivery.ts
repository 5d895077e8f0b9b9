/**
 * Report delivery (docs/protocol.md §9.2): the oldest 100 queued reports per request, acked only
 * once the server names their ids in `accepted` or `duplicates`; a batch the server refuses is
 * re-sent one report at a time so that only the reports it refuses are dropped (and counted).
 */

import type { ServerApi } from "./api.js";
import { firstLine, isUnauthorized, ServerRejected, ServerUnavailable } from "./errors.js";
import type { Outbox } from "./outbox.js";

export const REPORT_BATCH = 100;

/** What delivery needs from the agent. */
export interface DeliveryHooks {
  /** registers when needed; throws like the API does */
  ensureRegistered(): Promise<void>;
  /** the server is away: back off */
  serverAway(err: ServerUnavailable): void;
  /** a 401: re-register later, or stop for good when revoked */
  unauthorized(err: ServerRejected): Promise<void>;
  /** no more network traffic (revoked) */
  stopped(): boolean;
  log(level: "info" | "warn" | "error", message: string): void;
}

export class Delivery {
  constructor(private readonly api: ServerApi, private readonly outbox: Outbox, private readonly hooks: DeliveryHooks) {}

  /** Send batches until the outbox is empty; false when reports are left (server away, refused). */
  async deliver(maxBatches = 50): Promise<boolean> {
    for (let i = 0; i < maxBatches; i++) {
      if (!(await this.flush())) return false;
      if (this.outbox.length === 0) return true;
    }
    return false;
  }

  /** Deliver one batch; false when the server is away or does not accept this device now. */
  async flush(): Promise<boolean> {
    if (this.hooks.stopped()) return false;
    const batch = this.outbox.take(REPORT_BATCH);
    if (!batch.length) return true;
    let held: Set<string>;
    try {
      await this.hooks.ensureRegistered();
      held = await this.api.postReports(batch);
    } catch (err) {
      if (err instanceof ServerUnavailable) {
        this.hooks.serverAway(err);
        return false;
      }
      if (!(err instanceof ServerRejected)) throw err;
      if (err.status === 401) {
        await this.hooks.unauthorized(err);
        return false;
      }
      held = await this.oneByOne(batch);
    }
    await this.outbox.ack(held);
    return true;
  }

  private async oneByOne(batch: ReturnType<Outbox["take"]>): Promise<Set<string>> {
    const held = new Set<string>();
    for (const report of batch) {
      try {
        for (const id of await this.api.postReports([report])) held.add(id);
      } catch (err) {
        if (isUnauthorized(err)) {
          await this.hooks.unauthorized(err);
          break;
        }
        if (!(err instanceof ServerRejected)) {
          if (err instanceof ServerUnavailable) this.hooks.serverAway(err);
          break;
        }
        this.hooks.log("error", `report ${report.id} refused, dropped: ${firstLine(err)}`);
        await this.outbox.noteDropped(1 + (report.dropped_windows || 0));
        held.add(report.id);
      }
    }
    return held;
  }
}
