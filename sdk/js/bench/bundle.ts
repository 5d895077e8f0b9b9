/**
 * The SDK's own size in an app bundle: `src/index.ts` bundled and minified by esbuild (ESM,
 * platform-neutral, onnxruntime never part of it), with the @noble packages inside and left
 * out, raw and gzipped; what each module adds (esbuild's metafile); each adapter entry point
 * alone. Run from sdk/js.
 */

import { build } from "esbuild";
import * as path from "node:path";
import { gzipSync } from "node:zlib";

import { emit } from "./common.js";

const SDK = process.cwd(); // sdk/js

async function measure(entry: string, external: string[]) {
  const result = await build({
    entryPoints: [path.join(SDK, entry)], bundle: true, minify: true, format: "esm", platform: "neutral",
    target: "es2020", write: false, external, mainFields: ["module", "main"], logLevel: "silent", metafile: true,
  });
  const code = result.outputFiles[0]!.contents;
  const inputs = Object.values(result.metafile.outputs)[0]!.inputs;
  const modules = Object.entries(inputs).map(([file, { bytesInOutput }]) => ({ file, bytes: bytesInOutput }))
    .filter((m) => m.bytes > 0).sort((a, b) => b.bytes - a.bytes);
  return { size: { bytes: code.length, gzip_bytes: gzipSync(code, { level: 9 }).length }, modules };
}

const withNoble = await measure("src/index.ts", []);
const sdk = await measure("src/index.ts", ["@noble/*"]);
const rows = [
  { what: "SDK (src/index.ts) + @noble/ed25519 + @noble/hashes", ...withNoble.size },
  { what: "SDK (src/index.ts) without @noble/*", ...sdk.size },
];
for (const adapter of ["react-native-fs", "expo-file-system", "expo-secure-store", "react-native-keychain"]) {
  rows.push({ what: `adapter @edgeship/device/${adapter}`, ...(await measure(`src/adapters/${adapter}.ts`, ["@noble/*"])).size });
}
// minified bytes each module adds to the SDK without @noble (they sum to the bundle, less esbuild's glue)
emit({ esbuild: (await import("esbuild")).version, rows, modules: sdk.modules });
