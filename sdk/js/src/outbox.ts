/**
 * A durable outbox (docs/protocol.md §9.1; reference `edge_agent/outbox.py`): closed reports
 * wait in files until the server holds them, across app restarts.
 *
 * Each `add` is one file, `outbox/<seq>.json` (`{"carried", "reports"}`), written atomically: all
 * of a close's reports or none. `ack` rewrites or deletes files. `outbox/meta.json` holds the
 * windows dropped that no stored report carries yet and the last batch it accounts for; a batch
 * newer than that (a crash between the two writes) already carries its share, so the share is
 * not counted twice. The queue is bounded (reports and JSON bytes); the oldest go first, and
 * the next report added carries how many in `dropped_windows`, so the server sees every loss.
 */

import type { Storage } from "./adapters.js";
import { utf8Encode } from "./bytes.js";
import { check, EdgeshipError, firstLine, nameErrors } from "./errors.js";
import { readJson, writeJson } from "./files.js";
import type { Report } from "./window.js";

/** the server's bound on one report's `dropped_windows`; the excess rides on the next ones. */
export const MAX_DROPPED_PER_REPORT = 1_000_000;

/** A write or read of the outbox failed (disk full...); nothing changed, retry later. */
export class OutboxError extends EdgeshipError {}
nameErrors({ OutboxError });

interface Batch {
  seq: number;
  carried: number;
  reports: Report[];
}

export interface OutboxOptions {
  dir?: string;
  maxReports?: number;
  maxBytes?: number;
  log?: (message: string) => void;
}

export class Outbox {
  private batches: Batch[] = [];
  private droppedPending = 0;
  private lastSeq = 0;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly dir: string;
  readonly maxReports: number;
  readonly maxBytes: number;
  private readonly log: (message: string) => void;
  /** a failure that changed nothing (an OutboxError says "outbox: ..."), logged */
  private readonly logError = (err: unknown) => this.log(firstLine(err));

  private constructor(private readonly storage: Storage, options: OutboxOptions) {
    this.dir = options.dir ?? "outbox";
    this.maxReports = options.maxReports ?? 10_000;
    this.maxBytes = options.maxBytes ?? 8 * 2 ** 20;
    this.log = options.log ?? (() => {});
    check(this.maxReports >= 1 && this.maxBytes >= 1, "maxReports and maxBytes must be >= 1");
  }

  /** Open the outbox in `storage`, reading what an earlier run left. */
  static async open(storage: Storage, options: OutboxOptions = {}): Promise<Outbox> {
    const outbox = new Outbox(storage, options);
    await outbox.load();
    return outbox;
  }

  /** Reports queued. */
  get length(): number {
    return this.batches.reduce((n, b) => n + b.reports.length, 0);
  }

  /** Windows dropped that no queued report carries yet. */
  get dropped(): number {
    return this.droppedPending;
  }

  /**
   * Store `reports` (one close) in one file. The first ones carry the windows dropped since the
   * last report that did. Then the oldest reports go if a bound is exceeded.
   *
   * @throws RangeError a report id is not 1–64 chars, repeats, or is queued already.
   * @throws OutboxError the write failed; nothing was stored.
   */
  add(reports: readonly Report[]): Promise<void> {
    return this.serial(async () => {
      if (!reports.length) return;
      const queued = new Set(this.batches.flatMap((b) => b.reports.map((r) => r.id)));
      for (const { id } of reports) {
        check(typeof id === "string" && id.length >= 1 && id.length <= 64, `report id ${JSON.stringify(id)}: not 1-64 chars`);
        check(!queued.has(id), `report id ${id} is already queued`);
        queued.add(id);
      }
      let left = this.droppedPending;
      const stored = reports.map((report) => {
        const own = report.dropped_windows || 0;
        const share = Math.max(0, Math.min(left, MAX_DROPPED_PER_REPORT - own));
        left -= share;
        return { ...report, dropped_windows: own + share };
      });
      const batch: Batch = { seq: this.lastSeq + 1, carried: this.droppedPending - left, reports: stored };
      await this.write(this.batchPath(batch.seq), batch);
      this.batches.push(batch);
      this.lastSeq = batch.seq;
      this.droppedPending = left;
      // the batch is stored: a failed meta write is repaired at the next open (see the module doc)
      await this.saveMeta().catch(this.logError);
      await this.makeRoom().catch(this.logError);
    });
  }

  /** Up to `limit` queued reports, oldest first; they stay queued until acked. */
  take(limit = 100): Report[] {
    return this.batches.flatMap((b) => b.reports).slice(0, limit);
  }

  /** Delete the reports the server holds; returns how many were queued. */
  ack(ids: Iterable<string>): Promise<number> {
    return this.serial(async () => {
      const done = new Set(ids);
      let deleted = 0;
      for (const batch of [...this.batches]) {
        const kept = batch.reports.filter((r) => !done.has(r.id));
        if (kept.length === batch.reports.length) continue;
        await this.replace(batch, kept);
        deleted += batch.reports.length - kept.length;
      }
      return deleted;
    });
  }

  /** Count windows given up on (a report the server refused alone): the next report added carries them. */
  noteDropped(windows: number): Promise<void> {
    return this.serial(async () => {
      if (windows <= 0) return;
      this.droppedPending += windows;
      await this.saveMeta();
    });
  }

  private async makeRoom(): Promise<void> {
    let count = this.length;
    let bytes = this.batches.reduce((n, b) => n + b.reports.reduce((m, r) => m + sizeOf(r), 0), 0);
    let dropped = 0;
    const cuts = new Map<Batch, number>();
    for (const batch of this.batches) {
      let cut = 0;
      for (const report of batch.reports) {
        if (count <= this.maxReports && bytes <= this.maxBytes) break;
        count -= 1;
        bytes -= sizeOf(report);
        dropped += 1 + (report.dropped_windows || 0);
        cut += 1;
      }
      if (cut) cuts.set(batch, cut);
    }
    if (!dropped) return;
    this.droppedPending += dropped; // counted first: a crash now over-counts rather than loses a loss
    try {
      await this.saveMeta();
    } catch (err) {
      this.droppedPending -= dropped; // nothing dropped: over the bound until the next add
      this.logError(err);
      return;
    }
    for (const [batch, cut] of cuts) await this.replace(batch, batch.reports.slice(cut));
    this.log(`outbox full: dropped ${dropped} oldest windows`);
  }

  private async replace(batch: Batch, reports: Report[]): Promise<void> {
    if (reports.length) await this.write(this.batchPath(batch.seq), { ...batch, reports });
    else await this.attempt(() => this.storage.remove(this.batchPath(batch.seq)));
    if (reports.length) batch.reports = reports;
    else this.batches = this.batches.filter((b) => b !== batch);
  }

  private async load(): Promise<void> {
    const meta = await readJson(this.storage, `${this.dir}/meta.json`) as { dropped_pending?: number; last_seq?: number } | undefined;
    this.droppedPending = meta?.dropped_pending ?? 0;
    this.lastSeq = meta?.last_seq ?? 0;
    const names = (await this.storage.list(this.dir)).filter((n) => /^\d{12}\.json$/.test(n)).sort();
    for (const name of names) {
      const path = `${this.dir}/${name}`;
      const batch = await readJson(this.storage, path) as Batch | undefined;
      if (!Array.isArray(batch?.reports) || typeof batch.seq !== "number") {
        await this.storage.rename(path, `${path}.corrupt`);
        this.log(`outbox file ${name} is corrupt; moved aside`);
        continue;
      }
      if (batch.seq > this.lastSeq) { // written, but the meta write after it did not happen
        this.droppedPending = Math.max(0, this.droppedPending - (batch.carried || 0));
        this.lastSeq = batch.seq;
      }
      this.batches.push(batch);
    }
  }

  private saveMeta(): Promise<void> {
    return this.write(`${this.dir}/meta.json`, { dropped_pending: this.droppedPending, last_seq: this.lastSeq });
  }

  private write(path: string, data: unknown): Promise<void> {
    return this.attempt(() => writeJson(this.storage, path, data));
  }

  private async attempt(step: () => Promise<void>): Promise<void> {
    try {
      await step();
    } catch (err) {
      throw new OutboxError(`outbox: ${firstLine(err)}`);
    }
  }

  private batchPath(seq: number): string {
    return `${this.dir}/${String(seq).padStart(12, "0")}.json`;
  }

  /** Operations run one at a time, in call order (they interleave awaits otherwise). */
  private serial<R>(step: () => Promise<R>): Promise<R> {
    const run = this.queue.then(step, step);
    this.queue = run.catch(() => {});
    return run;
  }
}

const sizes = new WeakMap<Report, number>();

function sizeOf(report: Report): number {
  let size = sizes.get(report);
  if (size === undefined) {
    size = utf8Encode(JSON.stringify(report)).length;
    sizes.set(report, size);
  }
  return size;
}
