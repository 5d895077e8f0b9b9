/**
 * Who this device is to the server (docs/protocol.md §2.3, §2.4; reference
 * `edge_agent/identity.py`): the device id and credential, kept in the app's secure store, and
 * the record of a revocation, which keeps the device from enrolling again with the same token.
 */

import type { SecureStore, Storage } from "./adapters.js";
import { sha256Hex, utf8Decode, utf8Encode } from "./bytes.js";

export const IDENTITY_KEY = "edgeship.identity";
const REVOKED_PATH = "revoked.json";

export interface DeviceIdentity {
  deviceId: string;
  credential: string;
}

/** The credential in the secure store; absent until the device registers. */
export class Identity {
  private cached: DeviceIdentity | null = null;

  private constructor(private readonly store: SecureStore) {}

  static async open(store: SecureStore): Promise<Identity> {
    const identity = new Identity(store);
    const text = await store.get(IDENTITY_KEY);
    if (text !== null) {
      try {
        const data = JSON.parse(text) as { device_id?: unknown; credential?: unknown };
        if (typeof data.device_id === "string" && typeof data.credential === "string") {
          identity.cached = { deviceId: data.device_id, credential: data.credential };
        }
      } catch {
        // unreadable: register again
      }
    }
    return identity;
  }

  get current(): DeviceIdentity | null {
    return this.cached;
  }

  async save(identity: DeviceIdentity): Promise<void> {
    await this.store.set(IDENTITY_KEY, JSON.stringify({ device_id: identity.deviceId, credential: identity.credential }));
    this.cached = identity;
  }

  async forget(): Promise<void> {
    this.cached = null;
    await this.store.remove(IDENTITY_KEY);
  }
}

/** `revoked.json`: the device was revoked; it enrolls again only with another enrollment token. */
export class Revocation {
  constructor(private readonly storage: Storage) {}

  async record(deviceId: string | null, enrollToken: string | null, detail: string, nowIso: string): Promise<void> {
    const data = { device_id: deviceId, revoked_at: nowIso, enroll_token_sha256: tokenHash(enrollToken), detail };
    await this.storage.writeAtomic(REVOKED_PATH, utf8Encode(JSON.stringify(data)));
  }

  /** Whether a revocation blocks enrolling with `enrollToken` (the same token, or an unreadable record). */
  async blocks(enrollToken: string | null): Promise<boolean> {
    const bytes = await this.storage.read(REVOKED_PATH);
    if (bytes === null) return false;
    try {
      const data = JSON.parse(utf8Decode(bytes)) as { enroll_token_sha256?: unknown };
      return data.enroll_token_sha256 === tokenHash(enrollToken);
    } catch {
      return true;
    }
  }

  async exists(): Promise<boolean> {
    return (await this.storage.size(REVOKED_PATH)) !== null;
  }

  clear(): Promise<void> {
    return this.storage.remove(REVOKED_PATH);
  }
}

function tokenHash(token: string | null): string | null {
  return token ? sha256Hex(utf8Encode(token)) : null;
}
