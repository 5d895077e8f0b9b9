/**
 * {@link SecureStore} over `expo-secure-store` (Keychain on iOS, Keystore-encrypted preferences
 * on Android), which the app passes in (the SDK never imports it):
 *
 *   import * as SecureStore from "expo-secure-store";
 *   import { ExpoSecureStore } from "@edgeship/device/expo-secure-store";
 *   const secureStore = new ExpoSecureStore(SecureStore);
 *
 * Type-checked against the package's published types; tested against a fake, not on a phone.
 */

import type * as ExpoSecureStoreModule from "expo-secure-store";

import type { SecureStore } from "../adapters.js";

/** The functions of `expo-secure-store` this adapter calls. */
export type ExpoSecureStoreApi = Pick<typeof ExpoSecureStoreModule, "getItemAsync" | "setItemAsync" | "deleteItemAsync">;
export type ExpoSecureStoreOptions = NonNullable<Parameters<typeof ExpoSecureStoreModule.getItemAsync>[1]>;

export class ExpoSecureStore implements SecureStore {
  /** @param options passed on every call, e.g. `{ keychainAccessible: SecureStore.AFTER_FIRST_UNLOCK }` */
  constructor(private readonly api: ExpoSecureStoreApi, private readonly options: ExpoSecureStoreOptions = {}) {}

  get(key: string): Promise<string | null> {
    return this.api.getItemAsync(checkKey(key), this.options);
  }

  set(key: string, value: string): Promise<void> {
    return this.api.setItemAsync(checkKey(key), value, this.options);
  }

  remove(key: string): Promise<void> {
    return this.api.deleteItemAsync(checkKey(key), this.options);
  }
}

/** expo-secure-store accepts only these characters in keys; say so before the native side does. */
function checkKey(key: string): string {
  if (!/^[A-Za-z0-9._-]+$/.test(key)) throw new RangeError(`secure store key ${key} is not alphanumeric, ".", "-" or "_"`);
  return key;
}
