/**
 * The repository's Python (`../../.venv/bin/python`), for cross-checks against the reference
 * contract and for the integration fixture. Missing: the tests that need it skip locally and
 * fail under CI=true (the repository's skip policy, tests/skip_policy.py).
 */

import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

export const SDK_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const REPO_ROOT = path.resolve(SDK_ROOT, "../..");
const CANDIDATE = process.env["EDGESHIP_TOOLCHAIN_PYTHON"] ?? path.join(REPO_ROOT, ".venv/bin/python");

export const inCi = (): boolean => !["", "0", "false", "no"].includes((process.env["CI"] ?? "").trim().toLowerCase());

/** The interpreter, or null when there is none (then `CI=true` fails the run at import). */
export const PYTHON: string | null = existsSync(CANDIDATE) ? CANDIDATE : null;
if (PYTHON === null && inCi()) {
  throw new Error(`CI=true and the repository's Python is missing (${CANDIDATE}): run \`make setup\``);
}

/** Run `code` with the repository on `sys.path`; stdin `input`; returns stdout (throws on failure). */
export function runPython(code: string, input = ""): string {
  if (PYTHON === null) throw new Error("no Python");
  const done = spawnSync(PYTHON, ["-c", code], {
    input, cwd: REPO_ROOT, encoding: "utf8", timeout: 120_000, maxBuffer: 64 * 2 ** 20,
    env: { ...process.env, PYTHONPATH: REPO_ROOT },
  });
  if (done.status !== 0) throw new Error(`python failed (${done.status}): ${done.stderr}`);
  return done.stdout;
}
