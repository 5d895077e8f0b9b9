/**
 * Exponential backoff with "equal jitter" (docs/protocol.md §9.3; reference
 * `edge_agent/backoff.py`), for the server being away and for variants that failed.
 */

/**
 * Delays that double per failure up to a cap, half fixed and half random, so a fleet that lost
 * its server does not come back in lockstep: 0.5–1 s, 1–2 s, 2–4 s … 150–300 s.
 */
export class Backoff {
  failures = 0;

  constructor(readonly initialSeconds = 1, readonly maxSeconds = 300, private readonly random: () => number = Math.random) {}

  /**
   * Record a failure; seconds to wait before the next try. With the server's `Retry-After`
   * the wait is never shorter, spread over [r, 1.5 r] so a fleet told the same does not return at once.
   */
  failure(retryAfterSeconds?: number): number {
    const ceiling = Math.min(this.maxSeconds, this.initialSeconds * 2 ** this.failures);
    this.failures += 1;
    const delay = ceiling / 2 + (this.random() * ceiling) / 2;
    return retryAfterSeconds ? Math.max(delay, retryAfterSeconds * (1 + this.random() / 2)) : delay;
  }

  success(): void {
    this.failures = 0;
  }
}

/**
 * Variants that failed to load or their golden check, and until when they are not tried again;
 * the wait doubles per new failure of the same `version:sha256`, up to 16× (§7.4).
 */
export class VariantBackoff {
  /** `version:sha256` → [failures, unix ms until it may be tried again] */
  private readonly state = new Map<string, [number, number]>();

  constructor(readonly initialMs = 600_000, readonly maxMs = initialMs * 16) {}

  /** Record a failure at `nowMs`; when the variant may be tried again. */
  failed(key: string, nowMs: number): number {
    const count = this.state.get(key)?.[0] ?? 0;
    const until = nowMs + Math.min(this.maxMs, this.initialMs * 2 ** count);
    this.state.set(key, [count + 1, until]);
    return until;
  }

  blocked(key: string, nowMs: number): boolean {
    return (this.state.get(key)?.[1] ?? -Infinity) > nowMs;
  }
}
