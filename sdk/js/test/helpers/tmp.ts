import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach } from "vitest";

import { NodeStorage } from "../../src/adapters/node.js";

const made: string[] = [];
afterEach(() => {
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A fresh directory removed after the test. */
export function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), "edgeship-sdk-"));
  made.push(dir);
  return dir;
}

export function tempStorage(): NodeStorage {
  return new NodeStorage(tempDir());
}
