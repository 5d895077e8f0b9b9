/**
 * From an assignment to a loaded, checked model, with its files in the model store (§7.1;
 * reference `edge_agent/installer.py`). Each step refuses what it cannot vouch for: signed
 * manifest → download (resumable, size and time limits, sha256) → runtime load → golden probe.
 * Only then may the agent swap the model in and make it the store's current entry.
 */

import type { Clock, Http, Storage } from "./adapters.js";
import type { AssignedRelease, ServerApi } from "./api.js";
import { utf8Decode } from "./bytes.js";
import { download } from "./download.js";
import { check, DownloadError, firstLine, IntegrityError, loadFailed, ModelRefused, TooLarge } from "./errors.js";
import { canonicalJson, parseJson } from "./json.js";
import { Release } from "./manifest.js";
import { loadModel, type LoadedModel } from "./model.js";
import type { ModelRuntime } from "./runtime.js";
import type { TrustedKeys } from "./signing.js";
import { ModelStore, proven, type StoreEntry } from "./store.js";

export interface InstallerOptions<T> {
  api: ServerApi;
  http: Http;
  storage: Storage;
  clock: Clock;
  store: ModelStore;
  keys: TrustedKeys;
  runtime: ModelRuntime<T>;
  goldenSlack: number;
  /** download limits; undefined: download's defaults */
  maxBytes?: number;
  deadlineMs?: number;
  log: (message: string) => void;
}

export class Installer<T> {
  private provenModel: string | null = null;

  constructor(private readonly o: InstallerOptions<T>) {}

  /**
   * Fetch and load the release a block names; the entry is not current yet (see {@link commit}).
   *
   * @throws ModelRefused the release must not run.
   * @throws DownloadError a transfer problem worth retrying at the next check-in.
   */
  async install(block: AssignedRelease & { cohort?: string }): Promise<[LoadedModel<T>, StoreEntry]> {
    const release = Release.fromAssignment(block, this.o.keys);
    await this.fetch(release.artifactUrl, release.sha256, release.variant.size_bytes);
    await this.fetch(release.goldenUrl, release.goldenSha256, null);
    const manifestSha = await this.o.store.putBytes(canonicalJson(release.signedManifest));
    const model = await this.load(release);
    const entry: StoreEntry = {
      blobs: { model: release.sha256, golden: release.goldenSha256, manifest: manifestSha },
      release: { model: release.model, version: release.version, variant_id: release.variant.id,
        artifact_url: release.artifactUrl, golden_url: release.goldenUrl },
      cohort: block.cohort === "canary" ? "canary" : "stable",
    };
    return [model, entry];
  }

  /**
   * Make `entry` current; the previous one becomes last good only if it ran as `stable`.
   * A failure to write is logged: the model runs anyway, and a restart falls back.
   */
  async commit(entry: StoreEntry, keep: readonly string[] = []): Promise<void> {
    try {
      const [current] = await this.o.store.state();
      await this.o.store.promote(entry, { currentWasGood: current === null || proven(current), keep });
    } catch (err) {
      this.o.log(`model not recorded (${firstLine(err)}); running it`);
      return;
    }
    this.provenModel = proven(entry) ? entry.blobs.model : null;
  }

  /** Record that the current model now runs as `stable` (its rollout was promoted): it may be the fallback. */
  async confirmStable(modelSha256: string, keep: readonly string[] = []): Promise<void> {
    if (modelSha256 === this.provenModel) return;
    try {
      const [current] = await this.o.store.state();
      if (current !== null && current.blobs.model === modelSha256 && !proven(current)) {
        await this.o.store.promote({ ...current, cohort: "stable" }, { keep });
        this.o.log(`model ${modelSha256.slice(0, 12)} is stable: a fallback now`);
      }
    } catch (err) {
      this.o.log(`model ${modelSha256.slice(0, 12)} not recorded as stable: ${firstLine(err)}`);
      return;
    }
    this.provenModel = modelSha256;
  }

  /** Load the store's current model, else its last good one (each re-verified); null when neither works. */
  async restore(): Promise<[LoadedModel<T>, StoreEntry] | null> {
    for (const entry of await this.o.store.startup()) {
      try {
        const bytes = await this.o.storage.read(this.o.store.blobPath(entry.blobs.manifest));
        check(bytes !== null, "manifest blob missing", Error);
        const info = entry.release;
        const release = Release.fromAssignment({
          ...info, manifest: parseJson(utf8Decode(bytes)), variant: { id: info.variant_id, sha256: entry.blobs.model },
        }, this.o.keys);
        const model = await this.load(release);
        this.o.log(`restored ${release.model} v${release.version} (${release.variant.id})`);
        return [model, entry];
      } catch (err) {
        this.o.log(`stored v${entry.release?.version} unusable: ${firstLine(err)}`);
      }
    }
    return null;
  }

  private async load(release: Release): Promise<LoadedModel<T>> {
    const { storage, store, runtime } = this.o;
    const modelPath = store.blobPath(release.sha256);
    const golden = await storage.read(store.blobPath(release.goldenSha256));
    if (golden === null) throw new ModelRefused("golden_mismatch", "golden set missing");
    const source = {
      ...(storage.localPath ? { path: storage.localPath(modelPath) } : {}),
      bytes: async () => {
        const bytes = await storage.read(modelPath);
        check(bytes !== null, `model blob ${release.sha256} missing`, Error);
        return bytes;
      },
    };
    return loadModel(release, source, golden, runtime, this.o.goldenSlack, () => this.o.clock.monotonicMs());
  }

  private async fetch(path: string, sha256: string, sizeBytes: number | null): Promise<void> {
    const { store, api } = this.o;
    if (await store.hasBlob(sha256, sizeBytes ?? undefined)) return; // names are given only after verification
    const url = api.url(path);
    try {
      await download({
        ...this.o, // http, storage, clock, maxBytes, deadlineMs
        url, dest: store.blobPath(sha256), sha256, sizeBytes, headers: api.authHeaders(url), timeoutMs: api.timeoutMs,
      });
    } catch (err) {
      if (err instanceof IntegrityError || err instanceof TooLarge) {
        throw loadFailed(`artifact refused: ${err.message}`);
      }
      if (err instanceof DownloadError && err.status === 404) {
        throw loadFailed(`artifact missing: ${err.message}`);
      }
      throw err;
    }
  }
}
