import { describe, expect, it } from "vitest";

import { sha256Hex } from "../../src/bytes.js";
import { download, partialPath } from "../../src/download.js";
import { DownloadError, IntegrityError, TooLarge, TransferError } from "../../src/errors.js";
import { FakeClock } from "../helpers/fake-clock.js";
import { FakeServer } from "../helpers/fake-server.js";
import { tempStorage } from "../helpers/tmp.js";

const BYTES = Uint8Array.from({ length: 100 }, (_, i) => (i * 37) % 256);
const SHA = sha256Hex(BYTES);

function setup() {
  const server = new FakeServer();
  server.artifacts.set(SHA, BYTES);
  server.devices.set("d", { id: "d", credential: "c", revoked: false, registration: {}, reports: new Map() });
  const storage = tempStorage();
  const clock = new FakeClock();
  const get = (options: Partial<Parameters<typeof download>[0]> = {}) => download({
    http: server, storage, clock, url: `http://127.0.0.1/v1/artifacts/${SHA}`, dest: `blobs/${SHA}`, sha256: SHA,
    sizeBytes: BYTES.length, headers: { Authorization: "Bearer c" }, ...options,
  });
  return { server, storage, clock, get };
}

describe("artifact download (§5.3)", () => {
  it("resumes a transfer cut in the middle with Range, and keeps nothing unverified", async () => {
    const { server, storage, get } = setup();
    server.cutAfterBytes = 42;
    await expect(get()).rejects.toThrow(TransferError);
    expect(await storage.size(partialPath(`blobs/${SHA}`))).toBe(42);
    expect(await storage.size(`blobs/${SHA}`)).toBeNull();
    server.cutAfterBytes = null;
    await get();
    expect(server.requests.at(-1)!.headers["Range"]).toBe("bytes=42-");
    expect(await storage.read(`blobs/${SHA}`)).toEqual(BYTES);
    expect(await storage.size(partialPath(`blobs/${SHA}`))).toBeNull();
    const before = server.requests.length;
    await get(); // verified already: nothing requested
    expect(server.requests.length).toBe(before);
  });

  it("refuses a wrong size or sha256 before anything is kept", async () => {
    const { server, storage, get } = setup();
    await expect(get({ sizeBytes: 99 })).rejects.toThrow(IntegrityError);
    const other = sha256Hex(new Uint8Array([1]));
    server.artifacts.set(other, BYTES); // the server sends bytes that are not the artifact named
    await expect(get({ url: `http://127.0.0.1/v1/artifacts/${other}`, dest: `blobs/${other}`, sha256: other }))
      .rejects.toThrow(/sha256 mismatch/);
    expect(await storage.list("blobs")).toEqual([]);
  });

  it("refuses an artifact over the limit without asking for it", async () => {
    const { server, get } = setup();
    await expect(get({ maxBytes: 99 })).rejects.toThrow(TooLarge);
    expect(server.requests).toHaveLength(0);
    await expect(get({ maxBytes: 99, sizeBytes: null })).rejects.toThrow(TooLarge); // size learnt from the server
  });

  it("verifies a complete partial after a 416 and restarts a bad one once", async () => {
    const { storage, get, server } = setup();
    await storage.writeAtomic(partialPath(`blobs/${SHA}`), BYTES);
    await get();
    expect(server.requests).toHaveLength(0); // complete and verified: no request at all
    await storage.remove(`blobs/${SHA}`);
    await storage.writeAtomic(partialPath(`blobs/${SHA}`), new Uint8Array(100)); // right size, wrong bytes
    await get({ sizeBytes: null }); // size unknown: asks from 100, gets 416, drops it, starts over
    expect(server.requests.map((r) => r.headers["Range"])).toEqual(["bytes=100-", undefined]);
    expect(await storage.read(`blobs/${SHA}`)).toEqual(BYTES);
  });

  it("keeps the partial on a 5xx, refuses on 404, stops at the deadline", async () => {
    const { server, storage, clock, get } = setup();
    server.faults.push({ match: () => true, kind: { status: 503, headers: { "Retry-After": "5" } } });
    await expect(get()).rejects.toThrow(TransferError);
    server.artifacts.delete(SHA);
    const missing = await get().catch((err: unknown) => err);
    expect(missing).toBeInstanceOf(DownloadError);
    expect((missing as DownloadError).status).toBe(404);
    server.artifacts.set(SHA, BYTES);
    const slow = { ...server, request: async (r: Parameters<FakeServer["request"]>[0]) => {
      const response = await server.request(r);
      return { ...response, async *chunks() {
        for await (const chunk of response.chunks()) {
          clock.monoMs += 400_000; // each chunk takes 400 s
          yield chunk;
        }
      } };
    } };
    await expect(get({ http: slow })).rejects.toThrow(/deadline/);
    expect(await storage.size(partialPath(`blobs/${SHA}`))).toBeGreaterThan(0); // kept for resume
  });
});
