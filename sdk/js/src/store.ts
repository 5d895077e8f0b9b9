/**
 * The on-device model store: content-addressed blobs, and which entry is current and last good
 * (docs/protocol.md §7.2; reference `edge_agent/store.py`, same layout and state format).
 *
 *     models/blobs/<sha256>         model files, golden sets, manifests
 *     models/blobs/<sha256>.part    a download in progress
 *     models/state.json             {"current": entry | null, "last_good": entry | null}
 *     models/state.json.prev        the state before the last write (fallback if state.json is corrupt)
 *
 * Every write goes through `Storage.writeAtomic`, so a crash leaves the old or the new state.
 */

import type { Storage } from "./adapters.js";
import { SHA256_HEX, sha256Hex, utf8Decode, utf8Encode } from "./bytes.js";
import { fileSha256 } from "./download.js";
import { check, firstLine } from "./errors.js";
import { isObject } from "./json.js";

/** stale partial downloads and temp files are deleted after this long. */
export const STALE_PARTIAL_MS = 86_400_000; // a day

/** A model the store can restore: its blobs by role, the release it is, its cohort. */
export interface StoreEntry {
  blobs: { model: string; golden: string; manifest: string };
  release: { model: string; version: string; variant_id: string; artifact_url: string; golden_url: string };
  cohort: "stable" | "canary";
}

interface State {
  current: StoreEntry | null;
  last_good: StoreEntry | null;
}

/** Whether an entry ran as `stable`: only those may become the fallback (§7.2 rule 5). */
export const proven = (entry: StoreEntry): boolean => (entry.cohort ?? "stable") === "stable";

export class ModelStore {
  readonly blobsDir: string;
  private readonly statePath: string;
  private readonly prevStatePath: string;

  constructor(private readonly storage: Storage, private readonly root = "models",
              private readonly log: (message: string) => void = () => {}) {
    this.blobsDir = `${root}/blobs`;
    this.statePath = `${root}/state.json`;
    this.prevStatePath = `${root}/state.json.prev`;
  }

  blobPath(sha256: string): string {
    checkSha256(sha256);
    return `${this.blobsDir}/${sha256}`;
  }

  /** Cheap: the blob exists (with `sizeBytes`, if given); contents not hashed. */
  async hasBlob(sha256: string, sizeBytes?: number): Promise<boolean> {
    const size = await this.storage.size(this.blobPath(sha256));
    return size !== null && (sizeBytes === undefined || size === sizeBytes);
  }

  async verifyBlob(sha256: string): Promise<boolean> {
    return (await this.hasBlob(sha256)) && (await fileSha256(this.storage, this.blobPath(sha256))) === sha256;
  }

  /** Store bytes as a blob and return their sha256. */
  async putBytes(data: Uint8Array): Promise<string> {
    const sha256 = sha256Hex(data);
    if (!((await this.hasBlob(sha256, data.length)) && (await this.verifyBlob(sha256)))) {
      await this.storage.writeAtomic(this.blobPath(sha256), data);
    }
    return sha256;
  }

  /** `[current, last_good]`; a corrupt state.json is moved aside and state.json.prev used. */
  async state(): Promise<[StoreEntry | null, StoreEntry | null]> {
    let loaded: [State, Uint8Array] | null = null;
    try {
      loaded = await this.load(this.statePath);
    } catch (err) {
      const aside = `${this.statePath}.corrupt-${Date.now()}`;
      await this.storage.rename(this.statePath, aside);
      this.log(`${this.statePath} corrupt (${firstLine(err)}); moved to ${aside}`);
    }
    if (loaded === null) {
      loaded = await this.load(this.prevStatePath).catch(() => null);
      if (loaded !== null) {
        this.log(`using ${this.prevStatePath}`);
        await this.storage.writeAtomic(this.statePath, loaded[1]);
      }
    }
    return loaded === null ? [null, null] : [loaded[0].current, loaded[0].last_good];
  }

  /**
   * The entries to try at start, best first: current, then last good, each only if all its
   * blobs exist and hash to their names. Corrupt blobs are deleted (downloaded again later).
   */
  async startup(): Promise<StoreEntry[]> {
    const chosen: StoreEntry[] = [];
    for (const entry of await this.state()) {
      if (entry === null || chosen.some((c) => sameBlobs(c, entry))) continue;
      let usable = true;
      for (const sha of Object.values(entry.blobs)) {
        if (!(await this.hasBlob(sha))) usable = false;
        else if (!(await this.verifyBlob(sha))) {
          usable = false;
          await this.storage.remove(this.blobPath(sha));
          this.log(`store: blob ${sha.slice(0, 12)} corrupt; deleted`);
        }
      }
      if (usable) chosen.push(entry);
    }
    return chosen;
  }

  /**
   * Make `entry` current; the previous current becomes last good if it was good and is another
   * model. Then delete blobs neither references (except `keep`).
   */
  async promote(entry: StoreEntry, options: { currentWasGood?: boolean; keep?: readonly string[] } = {}): Promise<void> {
    checkEntry(entry);
    for (const sha of Object.values(entry.blobs)) check(await this.hasBlob(sha), `cannot promote: no blob ${sha}`);
    let [current, lastGood] = await this.state();
    if (current !== null && (options.currentWasGood ?? true) && current.blobs.model !== entry.blobs.model) {
      lastGood = current;
    }
    // the state becomes .prev, unless it is corrupt: never overwrite a good .prev with that
    const previous = await this.load(this.statePath).catch(() => null);
    if (previous !== null) await this.storage.writeAtomic(this.prevStatePath, previous[1]).catch(() => {});
    const state: State = { current: entry, last_good: lastGood };
    await this.storage.writeAtomic(this.statePath, utf8Encode(`${JSON.stringify(state, null, 2)}\n`));
    await this.collectGarbage(options.keep ?? []);
  }

  /** Delete blobs referenced by neither entry (partials and temp files once stale). */
  async collectGarbage(keep: readonly string[] = [], nowMs = Date.now()): Promise<string[]> {
    const [current, lastGood] = await this.state();
    const referenced = new Set(keep);
    for (const entry of [current, lastGood]) if (entry) Object.values(entry.blobs).forEach((s) => referenced.add(s));
    const removed: string[] = [];
    for (const name of await this.storage.list(this.blobsDir)) {
      const path = `${this.blobsDir}/${name}`;
      if (/\.(part|tmp)$/.test(name)) {
        const mtime = await this.storage.mtimeMs(path);
        if (mtime === null || nowMs - mtime < STALE_PARTIAL_MS) continue;
      } else if (referenced.has(name) || !SHA256_HEX.test(name)) {
        continue;
      }
      await this.storage.remove(path);
      removed.push(name);
    }
    return removed;
  }

  /** The state file at `path` and its bytes, null when absent; throws when it is corrupt. */
  private async load(path: string): Promise<[State, Uint8Array] | null> {
    const bytes = await this.storage.read(path);
    if (bytes === null) return null;
    const data: unknown = JSON.parse(utf8Decode(bytes));
    check(isObject(data) && "current" in data && "last_good" in data, "not a {current, last_good} object");
    for (const entry of [data["current"], data["last_good"]]) if (entry !== null) checkEntry(entry);
    return [data as unknown as State, bytes];
  }
}

function sameBlobs(a: StoreEntry, b: StoreEntry): boolean {
  return a.blobs.model === b.blobs.model && a.blobs.golden === b.blobs.golden && a.blobs.manifest === b.blobs.manifest;
}

function checkEntry(entry: unknown): asserts entry is StoreEntry {
  const blobs = (entry as StoreEntry | null)?.blobs;
  check(isObject(blobs) && typeof blobs.model === "string", "an entry needs blobs.model");
  Object.values(blobs).forEach(checkSha256);
}

function checkSha256(sha256: unknown): void {
  check(typeof sha256 === "string" && SHA256_HEX.test(sha256), `blob name ${JSON.stringify(sha256)} is not a sha256`);
}
