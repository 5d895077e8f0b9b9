import { readdirSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";

import { SDK_ROOT } from "../helpers/python.js";

const SRC = path.join(SDK_ROOT, "src");

describe("what the core may import", () => {
  it("imports only its own modules and the two audited @noble packages; Node only in adapters/node.ts", () => {
    const files = readdirSync(SRC, { recursive: true }).map(String).filter((f) => f.endsWith(".ts"));
    expect(files.length).toBeGreaterThan(15);
    for (const file of files) {
      const text = readFileSync(path.join(SRC, file), "utf8");
      const imports = [...text.matchAll(/^(?:import|export)[^;]*?from\s+"([^"]+)"/gms)].map((m) => m[1]!);
      for (const spec of imports) {
        const allowed = spec.startsWith(".") || spec.startsWith("@noble/") ||
          (file === path.join("adapters", "node.ts") && spec.startsWith("node:"));
        expect(allowed, `${file} imports ${spec}`).toBe(true);
      }
    }
  });
});
