/**
 * The real rollout server with real signed releases (test/fixtures/server_fixture.py), one per
 * test file: started in `beforeAll`, driven with JSON commands over its stdin.
 */

import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { createInterface } from "node:readline";

import { PYTHON, REPO_ROOT, SDK_ROOT } from "../helpers/python.js";

export interface FixtureInfo {
  url: string;
  admin: string;
  enroll: string;
  model: string;
  public_key: string;
  releases: Record<string, string>;
  eval: string;
  data_dir: string;
}

export interface ReportRow {
  report_id: string;
  device_id: string;
  variant_id: string;
  cohort: string;
  inferences: number;
  labelled: number;
  correct: number;
  latency_sketch: string | null;
  err_load_failed: number;
  err_golden_mismatch: number;
  err_runtime_error: number;
  load_seconds: number | null;
  peak_rss_bytes: number | null;
  dropped_windows: number;
  release_id: number | null;
  rollout_id: number | null;
  shadow_samples: number;
  shadow_agree: number;
}

export class ServerFixture {
  private answers: ((line: string) => void)[] = [];
  private stderr = "";

  private constructor(private readonly child: ChildProcessWithoutNullStreams, private readonly dataDir: string,
                      readonly info: FixtureInfo) {}

  /** Build (cached in build/sdk-js) and publish the releases, start the server. */
  static async start(): Promise<ServerFixture> {
    if (PYTHON === null) throw new Error("no Python");
    const dataDir = mkdtempSync(path.join(tmpdir(), "edgeship-sdk-server-"));
    const child = spawn(PYTHON, [path.join(SDK_ROOT, "test/fixtures/server_fixture.py"),
      "--cache", path.join(REPO_ROOT, "build/sdk-js"), "--data", dataDir], {
      cwd: REPO_ROOT, env: { ...process.env, PYTHONPATH: REPO_ROOT }, stdio: ["pipe", "pipe", "pipe"],
    });
    const lines = createInterface({ input: child.stdout });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-4000);
    });
    const first = await new Promise<string>((resolve, reject) => {
      lines.once("line", resolve);
      child.once("exit", (code) => reject(new Error(`server fixture exited (${code}): ${stderr}`)));
    });
    const fixture = new ServerFixture(child, dataDir, JSON.parse(first) as FixtureInfo);
    lines.on("line", (line) => fixture.answers.shift()?.(line));
    child.stderr.on("data", (chunk: Buffer) => {
      fixture.stderr = (fixture.stderr + chunk.toString()).slice(-4000);
    });
    return fixture;
  }

  /** One command; its JSON answer (an `error` answer throws). */
  async command<R>(request: Record<string, unknown>): Promise<R> {
    const line = await new Promise<string>((resolve) => {
      this.answers.push(resolve);
      this.child.stdin.write(`${JSON.stringify(request)}\n`);
    });
    const answer = JSON.parse(line) as R & { error?: string };
    if (answer.error) throw new Error(`fixture ${JSON.stringify(request)}: ${answer.error}\n${this.stderr}`);
    return answer;
  }

  async reports(deviceId?: string): Promise<ReportRow[]> {
    const { rows } = await this.command<{ rows: ReportRow[] }>({ cmd: "reports" });
    return deviceId === undefined ? rows : rows.filter((r) => r.device_id === deviceId);
  }

  /** An admin JSON request to the server. */
  async admin(method: string, route: string, body?: unknown): Promise<unknown> {
    const response = await fetch(`${this.info.url}${route}`, {
      method, headers: { Authorization: `Bearer ${this.info.admin}`, "Content-Type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    if (!response.ok) throw new Error(`${method} ${route}: HTTP ${response.status} ${await response.text()}`);
    return response.json();
  }

  async stop(): Promise<void> {
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.stdin.end();
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 30_000);
    await exited;
    clearTimeout(timer);
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
