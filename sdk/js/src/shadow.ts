/**
 * Shadow mode (docs/protocol.md §7.3; reference `edge_agent/shadow.py`): the candidate of a
 * shadow rollout runs beside the current model on a random share of live inputs.
 *
 * The answer always comes from the current model; the candidate's outputs are only compared with
 * it (top-1 agreement for classification, cosine ≥ 0.99 otherwise, and the largest absolute
 * difference per row) and counted in the current model's window as `shadow_samples` /
 * `shadow_agree`. Comparisons run one after the other behind `predict`, never awaited by it; with
 * {@link QUEUE_SIZE} waiting, a sample is skipped rather than the app slowed or memory grown.
 */

import { check } from "./errors.js";
import { AGREEMENT_COSINE, perSampleCosine, top1, type Array2 } from "./fidelity.js";
import { releaseModel, type LoadedModel } from "./model.js";
import type { ModelRuntime } from "./runtime.js";
import type { WindowKey, WindowSet } from "./window.js";

/** comparisons waiting at most; more are skipped (the reference agent's queue, §11.1) */
export const QUEUE_SIZE = 64;

export class ShadowRunner<T> {
  /** the candidate, or null when there is no shadow rollout for this device */
  model: LoadedModel<T> | null = null;
  sampleShare = 0;
  /** the candidate's files in the model store, kept from garbage collection */
  blobs: readonly string[] = [];
  /** comparisons queued or running */
  private waiting = 0;
  private tail: Promise<void> = Promise.resolve();

  constructor(private readonly windows: WindowSet, private readonly runtime: ModelRuntime<T>,
              private readonly random: () => number = Math.random,
              private readonly log: (err: unknown) => void = () => {}) {}

  /** Whether the candidate with this sha256 is the one loaded. */
  runs(sha256: string): boolean {
    return this.model !== null && this.model.release.sha256 === sha256;
  }

  /** Run `model` (null: none) on a share of the inputs; the candidate it replaces is freed once its comparisons ran. */
  set(model: LoadedModel<T> | null, sampleShare: number, blobs: readonly string[] = []): void {
    const old = this.model;
    this.model = model;
    this.sampleShare = Math.min(Math.max(Number.isFinite(sampleShare) ? sampleShare : 0, 0), 1);
    this.blobs = blobs;
    if (old !== null && old !== model) void this.tail.then(() => releaseModel(old));
  }

  clear(): void {
    this.set(null, 0);
  }

  /**
   * After the current model answered `feeds` with `outputs` (under `key`): on a share
   * `sampleShare` of calls, queue a comparison with the candidate. Never throws, never waits.
   */
  submit(key: WindowKey, feeds: Record<string, T>, outputs: Record<string, T>, outputName: string): void {
    const model = this.model;
    if (model === null || this.waiting >= QUEUE_SIZE || !(this.random() < this.sampleShare)) return;
    this.waiting += 1;
    this.tail = this.tail.then(() => this.compare(model, key, feeds, outputs[outputName]))
      .catch(this.log)
      .finally(() => {
        this.waiting -= 1;
      });
  }

  /** Resolves when the queued comparisons are done (a window close counts them; tests wait). */
  idle(): Promise<void> {
    return this.tail;
  }

  /** Run `model` on `feeds` and count agreement per row with the current model's `ours`. */
  async compare(model: LoadedModel<T>, key: WindowKey, feeds: Record<string, T>, ours: T | undefined): Promise<void> {
    if (ours === undefined) return;
    const mine = this.runtime.read(ours);
    const rows = mine.shape[0] ?? 1;
    let theirs: Array2;
    try {
      const out = (await model.session.run(feeds))[model.outputNames[0]!];
      if (out === undefined) throw new Error(`no output ${model.outputNames[0]}`);
      theirs = this.runtime.read(out);
      check(theirs.data.length === mine.data.length, "shadow output size");
    } catch (err) { // a failing candidate disagrees, and has no distance
      this.log(err);
      for (let r = 0; r < rows; r++) this.windows.recordShadow(key, false, null);
      return;
    }
    const reshaped: Array2 = { data: theirs.data, shape: mine.shape };
    const agree = model.classification
      ? ((a, b) => a.map((c, i) => c === b[i]))(top1(mine), top1(reshaped))
      : perSampleCosine([mine], [reshaped], rows).map((c) => c >= AGREEMENT_COSINE);
    const width = rows ? mine.data.length / rows : 0;
    for (let r = 0; r < rows; r++) {
      let distance = 0;
      for (let i = r * width; i < (r + 1) * width; i++) {
        const d = Math.abs(Number(mine.data[i]) - Number(reshaped.data[i]));
        distance = Number.isNaN(d) ? Infinity : Math.max(distance, d);
      }
      this.windows.recordShadow(key, agree[r]!, distance);
    }
  }
}
