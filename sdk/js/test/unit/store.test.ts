import { describe, expect, it } from "vitest";

import { sha256Hex, utf8Encode } from "../../src/bytes.js";
import { ModelStore, type StoreEntry } from "../../src/store.js";
import { tempStorage } from "../helpers/tmp.js";

async function entry(store: ModelStore, name: string, cohort: "stable" | "canary" = "stable"): Promise<StoreEntry> {
  const [model, golden, manifest] = await Promise.all(["model", "golden", "manifest"].map((role) =>
    store.putBytes(utf8Encode(`${name}-${role}`))));
  return { blobs: { model: model!, golden: golden!, manifest: manifest! }, cohort,
    release: { model: "m", version: name, variant_id: "v", artifact_url: "/a", golden_url: "/g" } };
}

describe("the model store (§7.2)", () => {
  it("keeps the last good model, never a canary that did not prove itself, and collects the rest", async () => {
    const storage = tempStorage();
    const store = new ModelStore(storage);
    const v1 = await entry(store, "1");
    await store.promote(v1);
    const v2 = await entry(store, "2", "canary");
    await store.promote(v2);
    expect(await store.state()).toEqual([v2, v1]);
    const v3 = await entry(store, "3");
    await store.promote(v3, { currentWasGood: false }); // v2 rolled back: it must not become the fallback
    expect(await store.state()).toEqual([v3, v1]);
    const names = await storage.list("models/blobs");
    expect(names.sort()).toEqual([...Object.values(v1.blobs), ...Object.values(v3.blobs)].sort());
  });

  it("falls back to state.json.prev when state.json is corrupt", async () => {
    const storage = tempStorage();
    const store = new ModelStore(storage);
    const v1 = await entry(store, "1");
    await store.promote(v1);
    const v2 = await entry(store, "2");
    await store.promote(v2);
    await storage.writeAtomic("models/state.json", utf8Encode("{garbage"));
    expect(await store.state()).toEqual([v1, null]);
    expect((await storage.list("models")).some((n) => n.startsWith("state.json.corrupt-"))).toBe(true);
  });

  it("skips at start an entry whose blob is corrupt, and deletes that blob", async () => {
    const storage = tempStorage();
    const store = new ModelStore(storage);
    const v1 = await entry(store, "1");
    await store.promote(v1);
    const v2 = await entry(store, "2");
    await store.promote(v2);
    await storage.writeAtomic(store.blobPath(v2.blobs.model), utf8Encode("flipped"));
    expect(await store.startup()).toEqual([v1]);
    expect(await store.hasBlob(v2.blobs.model)).toBe(false);
    expect(store.blobPath(sha256Hex(utf8Encode("x")))).toMatch(/^models\/blobs\/[0-9a-f]{64}$/);
  });
});
