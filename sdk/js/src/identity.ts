/**
 * Who this device is to the server (docs/protocol.md §2.3, §2.4; reference
 * `edge_agent/identity.py`): the device id and credential, kept in the app's secure store, and
 * the record of a revocation, which keeps the device from enrolling again with the same token.
 */

import type { SecureStore, Storage } from "./adapters.js";
import { sha256Hex, utf8Encode } from "./bytes.js";
import { readJson, writeJson } from "./files.js";
import { isObject } from "./json.js";

export const IDENTITY_KEY = "edgeship.identity";
const REVOKED_PATH = "revoked.json";
const RUNTIMES_PATH = "runtimes.json";

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
    try {
      const data = JSON.parse(text ?? "null") as { device_id?: unknown; credential?: unknown } | null;
      if (typeof data?.device_id === "string" && typeof data.credential === "string") {
        identity.cached = { deviceId: data.device_id, credential: data.credential };
      }
    } catch {
      // unreadable: register again
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

  record(deviceId: string | null, enrollToken: string | null, detail: string, nowIso: string): Promise<void> {
    return writeJson(this.storage, REVOKED_PATH,
      { device_id: deviceId, revoked_at: nowIso, enroll_token_sha256: tokenHash(enrollToken), detail });
  }

  /** Whether a revocation blocks enrolling with `enrollToken` (the same token, or an unreadable record). */
  async blocks(enrollToken: string | null): Promise<boolean> {
    const data = await readJson(this.storage, REVOKED_PATH, false);
    return data !== undefined && (!isObject(data) || data["enroll_token_sha256"] === tokenHash(enrollToken));
  }

  /** Forget a revocation (a new enrollment token enrolled the device); nothing when there is none. */
  clear(): Promise<void> {
    return this.storage.remove(REVOKED_PATH);
  }
}

/**
 * `runtimes.json`: the runtimes the server last took for this device (at registration or with
 * `PUT …/runtimes`), so that a start re-announces them only when they changed (§3.7).
 */
export class AnnouncedRuntimes {
  constructor(private readonly storage: Storage, private readonly path = RUNTIMES_PATH) {}

  /** Whether the server holds exactly `runtimes` for `deviceId` (false when unknown or unreadable). */
  async holds(deviceId: string, runtimes: Record<string, string>): Promise<boolean> {
    const data = await readJson(this.storage, this.path);
    return isObject(data) && data["device_id"] === deviceId && sorted(data["runtimes"]) === sorted(runtimes);
  }

  record(deviceId: string, runtimes: Record<string, string>): Promise<void> {
    return writeJson(this.storage, this.path, { device_id: deviceId, runtimes });
  }
}

function sorted(value: unknown): string {
  return isObject(value) ? JSON.stringify(Object.entries(value).sort(([a], [b]) => (a < b ? -1 : 1))) : "";
}

function tokenHash(token: string | null): string | null {
  return token ? sha256Hex(utf8Encode(token)) : null;
}
