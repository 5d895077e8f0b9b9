/**
 * Variants of a release this device refused, and which of them to ask the server to skip
 * (docs/protocol.md §3.1, §7.4; reference `edge_agent/refusals.py`).
 *
 * A refused variant is backed off ({@link VariantBackoff}). While it is, the next assignment poll
 * names it (`exclude_version`, `exclude`) and the server offers the next-best variant of the
 * same release, so the device runs something at once instead of waiting out the backoff. When
 * the backoff lapses so does the exclusion: the preferred variant is offered and tried again.
 */

import type { VariantBackoff } from "./backoff.js";

/** releases remembered (the agent runs one model; older releases' refusals are of no use) */
export const MAX_RELEASES = 8;
/** the most variants one poll may exclude (the server's bound too) */
export const MAX_EXCLUDED = 16;

/** The part of an assignment (or shadow block) that names a release variant. */
export interface VariantRef {
  version: string;
  variant?: { id?: string; sha256?: string } | null;
  sha256?: string;
}

export class RefusedVariants {
  /** version → variant id → backoff key; insertion order = least recently refused first */
  private readonly byVersion = new Map<string, Map<string, string>>();

  constructor(readonly backoff: VariantBackoff) {}

  /** Record that the block's variant was refused at `nowMs`; when it may be tried again. */
  refuse(block: VariantRef & { variant: { id: string } }, nowMs: number): number {
    const version = String(block.version);
    const refused = this.byVersion.get(version) ?? new Map<string, string>();
    this.byVersion.delete(version);
    this.byVersion.set(version, refused); // most recent last, so the oldest is dropped first
    const key = releaseVariantKey(block);
    refused.set(block.variant.id, key);
    while (this.byVersion.size > MAX_RELEASES) this.byVersion.delete(this.byVersion.keys().next().value!);
    return this.backoff.failed(key, nowMs);
  }

  /** Whether the block's variant is still backed off. */
  blocked(block: VariantRef, nowMs: number): boolean {
    return this.backoff.blocked(releaseVariantKey(block), nowMs);
  }

  /** Ids of the variants of release `version` still backed off, sorted (the poll's `exclude`). */
  excluded(version: string | null, nowMs: number): string[] {
    const refused = this.byVersion.get(version ?? "");
    if (refused === undefined) return [];
    // sorted as the reference agent sends them (ids are ASCII in practice; the server ignores the order)
    return [...refused].filter(([, key]) => this.backoff.blocked(key, nowMs)).map(([id]) => id).sort()
      .slice(0, MAX_EXCLUDED);
  }
}

/** Backoff key of an assignment's (or shadow block's) variant: release version and file. */
export function releaseVariantKey(block: VariantRef): string {
  return `${block.version}:${block.variant?.sha256 ?? block.sha256}`;
}
