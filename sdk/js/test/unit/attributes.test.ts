import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";

import { NodeFileSecureStore, NodeStorage } from "../../src/adapters/node.js";
import { EdgeshipAgent, type AgentOptions } from "../../src/agent.js";
import { FakeClock } from "../helpers/fake-clock.js";
import { fakeRuntime, type FakeTensor } from "../helpers/fake-runtime.js";
import { FakeServer } from "../helpers/fake-server.js";
import { makeRelease, pemOf, TEST_PUBLIC } from "../helpers/release.js";
import { tempDir } from "../helpers/tmp.js";

/** Canary targeting (docs/protocol.md §2.2): the app's attributes travel in the registration. */
function start(server: FakeServer, options: Partial<AgentOptions<FakeTensor>>) {
  const storage = new NodeStorage(tempDir());
  return EdgeshipAgent.start<FakeTensor>({
    server: "http://127.0.0.1:8080", model: "digits-cnn", enrollToken: "es_enroll", trustedKeys: [pemOf(TEST_PUBLIC)],
    storage, secureStore: new NodeFileSecureStore(storage), runtime: fakeRuntime(),
    device: { deviceClass: "android" }, http: server, clock: new FakeClock(), checkIntervalMs: null,
    randomBytes: (n) => new Uint8Array(randomBytes(n)), ...options,
  });
}

describe("attributes", () => {
  it("are sent at registration, and only when the app gives some", async () => {
    const server = new FakeServer();
    server.publish(makeRelease("1"));
    server.stable = "1";
    const tagged = await start(server, { attributes: { app_version: "4.2.1", region: "eu" } });
    await tagged.checkIn();
    const plain = await start(server, {});
    await plain.checkIn();
    expect(server.devices.get("device-1")!.registration["attributes"]).toEqual({ app_version: "4.2.1", region: "eu" });
    expect("attributes" in server.devices.get("device-2")!.registration).toBe(false);
    await tagged.stop();
    await plain.stop();
  });

  it("are checked before anything else", async () => {
    await expect(start(new FakeServer(), { attributes: { "App-Version": "4" } })).rejects.toThrow(/attributes/);
    await expect(start(new FakeServer(), { attributes: { note: "x".repeat(129) } })).rejects.toThrow(/attributes/);
  });
});
