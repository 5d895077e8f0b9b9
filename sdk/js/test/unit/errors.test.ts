import { describe, expect, it } from "vitest";

import * as errors from "../../src/errors.js";
import { OutboxError } from "../../src/outbox.js";

describe("the SDK's errors", () => {
  it("name every class (on the prototype, so stack traces carry it) and keep the hierarchy", () => {
    const classes = Object.entries(errors).filter(([, v]) => typeof v === "function" && v.prototype instanceof Error);
    expect(classes.length).toBeGreaterThanOrEqual(12);
    for (const [name, cls] of classes) {
      const err = new (cls as new (...args: unknown[]) => Error)("a message", "x", 500);
      expect(err.name).toBe(name);
      expect(err).toBeInstanceOf(errors.EdgeshipError);
      expect(String(err)).toMatch(new RegExp(`^${name}: `));
      expect(err.stack?.split("\n")[0]).toMatch(new RegExp(`^${name}: `));
    }
    expect(new errors.TransferError("u", "m")).toBeInstanceOf(errors.DownloadError);
    expect(new OutboxError("disk full").name).toBe("OutboxError");
  });

  it("read an error answer's code and detail, whatever its body", () => {
    expect(errors.httpError(403, '{"error": "device_pending", "detail": "waiting"}'))
      .toEqual(["HTTP 403: waiting", "device_pending"]);
    expect(errors.httpError(409, '{"error": "no_variant"}')).toEqual(["HTTP 409: no_variant", "no_variant"]);
    expect(errors.httpError(502, "<html>bad gateway</html>")).toEqual(["HTTP 502", ""]);
    expect(errors.httpError(400, "[1, 2]")).toEqual(["HTTP 400", ""]);
    expect(errors.isUnauthorized(new errors.ServerRejected("m", 401))).toBe(true);
    expect(errors.isUnauthorized(new errors.ServerRejected("m", 403))).toBe(false);
    expect(() => errors.check(false, "bad thing")).toThrow(new RangeError("bad thing"));
  });
});
