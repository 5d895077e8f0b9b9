import { describe, expect, it } from "vitest";

import { ExpoSecureStore, type ExpoSecureStoreApi } from "../../src/adapters/expo-secure-store.js";
import { KeychainSecureStore, type KeychainApi } from "../../src/adapters/react-native-keychain.js";
import { Identity } from "../../src/identity.js";

/** expo-secure-store's three calls over a Map (keys as restricted as the real one's). */
function fakeExpoSecureStore(): ExpoSecureStoreApi & { items: Map<string, string> } {
  const items = new Map<string, string>();
  const check = (key: string) => {
    if (!/^[\w.-]+$/.test(key)) throw new Error("Invalid key provided to SecureStore");
    return key;
  };
  return {
    items,
    getItemAsync: async (key) => items.get(check(key)) ?? null,
    setItemAsync: async (key, value) => void items.set(check(key), value),
    deleteItemAsync: async (key) => void items.delete(check(key)),
  };
}

/** react-native-keychain's generic passwords over a Map keyed by service. */
function fakeKeychain(): KeychainApi & { entries: Map<string, { username: string; password: string }> } {
  const entries = new Map<string, { username: string; password: string }>();
  return {
    entries,
    getGenericPassword: async (options) => {
      const found = entries.get(options?.service ?? "app");
      return found === undefined ? false : { ...found, service: options?.service ?? "app", storage: "keychain" as never };
    },
    setGenericPassword: async (username, password, options) => {
      entries.set(options?.service ?? "app", { username, password });
      return { service: options?.service ?? "app", storage: "keychain" as never };
    },
    resetGenericPassword: async (options) => entries.delete(options?.service ?? "app"),
  };
}

describe("the expo-secure-store adapter", () => {
  it("keeps, reads and forgets one string per key, and refuses keys the store cannot hold", async () => {
    const api = fakeExpoSecureStore();
    const store = new ExpoSecureStore(api);
    expect(await store.get("edgeship.identity")).toBeNull();
    await store.set("edgeship.identity", "{\"device_id\": \"d\"}");
    expect(await store.get("edgeship.identity")).toBe("{\"device_id\": \"d\"}");
    await store.remove("edgeship.identity");
    expect(api.items.size).toBe(0);
    expect(() => store.get("a key/with slash")).toThrow(RangeError);
  });
});

describe.each([
  ["expo-secure-store", () => new ExpoSecureStore(fakeExpoSecureStore())],
  ["react-native-keychain", () => new KeychainSecureStore(fakeKeychain())],
])("the %s adapter under the SDK's identity", (_name, make) => {
  it("keeps the device's credential across an app restart, and forgets it", async () => {
    const store = make();
    await (await Identity.open(store)).save({ deviceId: "dev-1", credential: "es_secret" });
    const reopened = await Identity.open(store);
    expect(reopened.current).toEqual({ deviceId: "dev-1", credential: "es_secret" });
    await reopened.forget();
    expect((await Identity.open(store)).current).toBeNull();
  });
});

describe("the react-native-keychain adapter", () => {
  it("keeps each key in its own service, so removing one leaves the others", async () => {
    const keychain = fakeKeychain();
    const store = new KeychainSecureStore(keychain, "my-app.edgeship");
    await store.set("edgeship.identity", "secret-1");
    await store.set("other", "secret-2");
    expect(await store.get("edgeship.identity")).toBe("secret-1");
    expect([...keychain.entries.keys()].sort()).toEqual(["my-app.edgeship.edgeship.identity", "my-app.edgeship.other"]);
    await store.remove("edgeship.identity");
    expect(await store.get("edgeship.identity")).toBeNull();
    expect(await store.get("other")).toBe("secret-2");
  });

  it("says so when the keychain refuses to store", async () => {
    const keychain = { ...fakeKeychain(), setGenericPassword: async () => false as const };
    await expect(new KeychainSecureStore(keychain).set("k", "v")).rejects.toThrow(/refused/);
  });
});
