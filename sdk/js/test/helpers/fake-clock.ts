/** A {@link Clock} that moves only when a test says so. */

import type { Clock } from "../../src/adapters.js";

interface Timer {
  id: number;
  at: number;
  callback: () => void;
}

export class FakeClock implements Clock {
  wallMs = Date.UTC(2026, 11, 7, 12, 0, 0);
  monoMs = 1_000;
  private timers: Timer[] = [];
  private nextId = 1;

  nowMs(): number {
    return this.wallMs;
  }

  monotonicMs(): number {
    return this.monoMs;
  }

  setTimer(callback: () => void, delayMs: number): unknown {
    const timer = { id: this.nextId++, at: this.monoMs + Math.max(0, delayMs), callback };
    this.timers.push(timer);
    return timer.id;
  }

  clearTimer(handle: unknown): void {
    this.timers = this.timers.filter((t) => t.id !== handle);
  }

  /** Move time on by `ms` (wall and monotonic), firing due timers in order; `settle` runs after each. */
  async advance(ms: number, settle: () => Promise<void> = async () => {}): Promise<void> {
    const end = this.monoMs + ms;
    for (;;) {
      const due = this.timers.filter((t) => t.at <= end).sort((a, b) => a.at - b.at)[0];
      if (due === undefined) break;
      this.timers = this.timers.filter((t) => t !== due);
      this.wallMs += due.at - this.monoMs;
      this.monoMs = due.at;
      due.callback();
      await settle();
    }
    this.wallMs += end - this.monoMs;
    this.monoMs = end;
  }

  get pending(): number {
    return this.timers.length;
  }
}
