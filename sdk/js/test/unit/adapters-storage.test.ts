import { describe, expect, it } from "vitest";

import type { Storage } from "../../src/adapters.js";
import { ExpoFileStorage } from "../../src/adapters/expo-file-system.js";
import { ReactNativeFsStorage } from "../../src/adapters/react-native-fs.js";
import { sha256Hex, utf8Decode, utf8Encode } from "../../src/bytes.js";
import { fileSha256 } from "../../src/download.js";
import { ModelStore } from "../../src/store.js";
import { Crash, fakeExpoFileSystem, fakeReactNativeFs, FakeDisk } from "../helpers/fake-phone-fs.js";

const ROOT = "/data/app/edgeship";

/** Each React Native storage adapter over a fake of its library's API (not run on a phone). */
const ADAPTERS: [string, (disk: FakeDisk) => Storage][] = [
  ["react-native-fs", (disk) => new ReactNativeFsStorage(fakeReactNativeFs(disk), ROOT)],
  ["expo-file-system", (disk) => new ExpoFileStorage(fakeExpoFileSystem(disk), `file://${ROOT}`)],
];

const text = (bytes: Uint8Array | null) => (bytes === null ? null : utf8Decode(bytes));

describe.each(ADAPTERS)("the %s storage adapter", (_name, make) => {
  it("reads what it wrote, and says null for what is missing", async () => {
    const storage = make(new FakeDisk());
    expect(await storage.read("a/b.json")).toBeNull();
    expect(await storage.size("a/b.json")).toBeNull();
    expect(await storage.mtimeMs("a/b.json")).toBeNull();
    await storage.writeAtomic("a/b.json", utf8Encode("{\"v\": 1}"));
    expect(text(await storage.read("a/b.json"))).toBe("{\"v\": 1}");
    expect(await storage.size("a/b.json")).toBe(8);
    expect(await storage.mtimeMs("a/b.json")).toBeGreaterThan(1_600_000_000_000);
    expect(storage.localPath?.("a/b.json")).toBe(`${ROOT}/a/b.json`);
  });

  it("replaces a file although the platform's move refuses an existing target", async () => {
    const storage = make(new FakeDisk());
    await storage.writeAtomic("state.json", utf8Encode("old"));
    await storage.writeAtomic("state.json", utf8Encode("new"));
    expect(text(await storage.read("state.json"))).toBe("new");
    expect(await storage.list("")).toEqual(["state.json"]);
  });

  it("leaves the old or the new contents whenever the replacement is cut, never less", async () => {
    for (let cut = 0; ; cut++) {
      const disk = new FakeDisk();
      await make(disk).writeAtomic("state.json", utf8Encode("old contents"));
      disk.crashAfter(cut);
      const finished = await make(disk).writeAtomic("state.json", utf8Encode("new contents")).then(() => true,
        (err: unknown) => { if (err instanceof Crash) return false; throw err; });
      disk.crashAfter(Infinity);
      const restarted = make(disk); // the app starts again on what the disk holds
      const seen = text(await restarted.read("state.json"));
      expect(finished ? ["new contents"] : ["old contents", "new contents"]).toContain(seen);
      expect(await restarted.size("state.json")).toBe(12);
      if (finished) break;
    }
  });

  it("reads ranges: the middle, and fewer bytes at the end", async () => {
    const storage = make(new FakeDisk());
    await storage.writeAtomic("blob", utf8Encode("0123456789"));
    expect(text(await storage.readRange("blob", 3, 4))).toBe("3456");
    expect(text(await storage.readRange("blob", 8, 100))).toBe("89");
    expect(await storage.readRange("blob", 10, 5)).toEqual(new Uint8Array(0));
  });

  it("appends to a download, or starts it over when asked to truncate", async () => {
    const storage = make(new FakeDisk());
    let file = await storage.openAppend("dl/model.part", false);
    await file.write(utf8Encode("abc"));
    await file.write(utf8Encode("def"));
    await file.sync();
    await file.close();
    file = await storage.openAppend("dl/model.part", false);
    await file.write(utf8Encode("gh"));
    await file.close();
    expect(text(await storage.read("dl/model.part"))).toBe("abcdefgh");
    file = await storage.openAppend("dl/model.part", true);
    await file.write(utf8Encode("x"));
    await file.close();
    expect(text(await storage.read("dl/model.part"))).toBe("x");
  });

  it("renames over an existing file, removes quietly, lists a missing directory as empty", async () => {
    const storage = make(new FakeDisk());
    await storage.writeAtomic("dl/m.part", utf8Encode("fresh"));
    await storage.writeAtomic("models/m", utf8Encode("stale"));
    await storage.rename("dl/m.part", "models/m");
    expect(text(await storage.read("models/m"))).toBe("fresh");
    expect(await storage.read("dl/m.part")).toBeNull();
    await storage.remove("models/m");
    await storage.remove("models/m");
    expect(await storage.list("models")).toEqual([]);
    expect(await storage.list("nowhere")).toEqual([]);
  });

  it("hashes natively, in lowercase hex, like the JS hash of the bytes", async () => {
    const storage = make(new FakeDisk());
    const data = utf8Encode("model bytes ".repeat(1000));
    await storage.writeAtomic("blob", data);
    expect(await storage.sha256!("blob")).toBe(sha256Hex(data));
    expect(await fileSha256(storage, "blob")).toBe(sha256Hex(data));
  });

  it("refuses paths that leave its directory", async () => {
    const storage = make(new FakeDisk());
    await expect(storage.read("../other-app/secret")).rejects.toThrow(RangeError);
    await expect(storage.writeAtomic("/etc/passwd", utf8Encode("x"))).rejects.toThrow(RangeError);
  });

  it("carries the SDK's model store: last good model kept, the rest collected", async () => {
    const storage = make(new FakeDisk());
    const store = new ModelStore(storage);
    const put = async (name: string) => {
      const [model, golden, manifest] = await Promise.all(["model", "golden", "manifest"].map((role) =>
        store.putBytes(utf8Encode(`${name}-${role}`))));
      return { blobs: { model: model!, golden: golden!, manifest: manifest! }, cohort: "stable" as const,
        release: { model: "m", version: name, variant_id: "v", artifact_url: "/a", golden_url: "/g" } };
    };
    const v1 = await put("1");
    await store.promote(v1);
    const v2 = await put("2");
    await store.promote(v2);
    const v3 = await put("3");
    await store.promote(v3);
    expect(await store.state()).toEqual([v3, v2]);
    expect((await storage.list("models/blobs")).sort()).toEqual([...Object.values(v2.blobs), ...Object.values(v3.blobs)].sort());
  });
});

describe("the react-native-fs adapter over the bridge", () => {
  it("reads a range without moving the whole file across", async () => {
    const disk = new FakeDisk();
    const rnfs = fakeReactNativeFs(disk);
    const storage = new ReactNativeFsStorage(rnfs, ROOT);
    await storage.writeAtomic("big", new Uint8Array(1 << 20));
    rnfs.bridgedBytes = 0;
    expect((await storage.readRange("big", 4096, 1024)).length).toBe(1024);
    expect(rnfs.bridgedBytes).toBeLessThan(2048);
  });
});
