/**
 * {@link SecureStore} over `react-native-keychain` (Keychain on iOS, Keystore on Android), which
 * the app passes in (the SDK never imports it). Each key is one generic-password entry whose
 * service is `<prefix>.<key>`:
 *
 *   import * as Keychain from "react-native-keychain";
 *   import { KeychainSecureStore } from "@edgeship/device/react-native-keychain";
 *   const secureStore = new KeychainSecureStore(Keychain);
 *
 * Type-checked against the package's published types; tested against a fake, not on a phone.
 */

import type * as KeychainModule from "react-native-keychain";

import type { SecureStore } from "../adapters.js";

/** The functions of `react-native-keychain` this adapter calls. */
export type KeychainApi = Pick<typeof KeychainModule, "getGenericPassword" | "setGenericPassword" | "resetGenericPassword">;
export type KeychainSetOptions = Omit<NonNullable<Parameters<typeof KeychainModule.setGenericPassword>[2]>, "service">;

export class KeychainSecureStore implements SecureStore {
  /**
   * @param prefix the services' prefix (one app may hold several agents' credentials)
   * @param options for writes, e.g. `{ accessible: Keychain.ACCESSIBLE.AFTER_FIRST_UNLOCK }`
   */
  constructor(private readonly keychain: KeychainApi, private readonly prefix = "edgeship",
              private readonly options: KeychainSetOptions = {}) {}

  private service(key: string): string {
    return `${this.prefix}.${key}`;
  }

  async get(key: string): Promise<string | null> {
    const found = await this.keychain.getGenericPassword({ service: this.service(key) });
    return found === false ? null : found.password;
  }

  async set(key: string, value: string): Promise<void> {
    const done = await this.keychain.setGenericPassword(key, value, { ...this.options, service: this.service(key) });
    if (done === false) throw new Error(`the keychain refused to store ${key}`);
  }

  async remove(key: string): Promise<void> {
    await this.keychain.resetGenericPassword({ service: this.service(key) });
  }
}
