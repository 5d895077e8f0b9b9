import { readdirSync, readFileSync } from "node:fs";
import * as path from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";

import { SDK_ROOT } from "../helpers/python.js";

const SRC = path.join(SDK_ROOT, "src");

/** The React Native adapters: each may name its library's types, never load the library. */
const PHONE_ADAPTERS: Record<string, string> = {
  [path.join("adapters", "react-native-fs.ts")]: "react-native-fs",
  [path.join("adapters", "expo-file-system.ts")]: "expo-file-system",
  [path.join("adapters", "expo-secure-store.ts")]: "expo-secure-store",
  [path.join("adapters", "react-native-keychain.ts")]: "react-native-keychain",
};

const importsOf = (text: string) =>
  [...text.matchAll(/^(import|export)(\s+type\b)?[^;]*?from\s+"([^"]+)"/gms)].map((m) => ({ typeOnly: !!m[2], spec: m[3]! }));

const sources = () => readdirSync(SRC, { recursive: true }).map(String).filter((f) => f.endsWith(".ts"));

describe("what the core may import", () => {
  it("imports only its own modules and the two audited @noble packages; Node only in adapters/node.ts", () => {
    const files = sources();
    expect(files.length).toBeGreaterThan(15);
    for (const file of files) {
      for (const { typeOnly, spec } of importsOf(readFileSync(path.join(SRC, file), "utf8"))) {
        const allowed = spec.startsWith(".") || spec.startsWith("@noble/") ||
          (file === path.join("adapters", "node.ts") && spec.startsWith("node:")) ||
          (typeOnly && PHONE_ADAPTERS[file] === spec);
        expect(allowed, `${file} imports ${spec}`).toBe(true);
      }
    }
  });

  it("ships React Native adapters whose JavaScript loads no native module (the app passes it in)", () => {
    const files = sources();
    for (const file of Object.keys(PHONE_ADAPTERS)) {
      expect(files).toContain(file);
      const js = ts.transpileModule(readFileSync(path.join(SRC, file), "utf8"), {
        compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: true,
          removeComments: true },
      }).outputText;
      const loaded = [...js.matchAll(/(?:from\s+|import\s*\(\s*|require\s*\(\s*)"([^"]+)"/g)].map((m) => m[1]!);
      expect(loaded.filter((spec) => !spec.startsWith(".")), file).toEqual([]);
    }
  });
});
