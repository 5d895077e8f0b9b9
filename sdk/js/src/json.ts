/**
 * JSON that keeps what a signature covers: a lossless parser and the canonical form of §4.2.
 *
 * `JSON.parse` turns `1.0` into `1` and `2.1e-07` into `2.1e-7`, and the manifest signature
 * covers Python's spelling of each number. So the signed manifest is parsed with
 * {@link parseJson}, which keeps every number's text ({@link JsonNumber}), and
 * {@link canonicalJson} prints it back exactly as `json.dumps(sort_keys=True,
 * separators=(",", ":"), ensure_ascii=False)` would. {@link toPlain} gives ordinary values.
 */

import { utf8Encode } from "./bytes.js";
import { check } from "./errors.js";

/** A JSON number as its source text, e.g. `"1.0"`, `"2.1e-07"`, `"20480"`. */
export class JsonNumber {
  constructor(readonly text: string) {}
  /** An integer lexeme (no fraction, no exponent): Python reads it as `int`. */
  get isInteger(): boolean {
    return /^-?\d+$/.test(this.text);
  }
  get value(): number {
    return Number(this.text);
  }
}

export type JsonValue = null | boolean | string | JsonNumber | JsonValue[] | JsonObject;
export interface JsonObject {
  [key: string]: JsonValue;
}

const MAX_DEPTH = 64;

/**
 * Parse JSON text keeping number lexemes. Strict RFC 8259 (no NaN, no trailing commas).
 * A repeated key keeps its last value, as Python's `json.loads` does.
 *
 * @throws SyntaxError naming the offset of the first problem.
 */
export function parseJson(text: string): JsonValue {
  let at = 0;
  const fail = (what: string): never => {
    throw new SyntaxError(`JSON: ${what} at offset ${at}`);
  };
  const ws = () => {
    while (" \t\n\r".includes(text[at]!)) at++;
  };
  /** skip whitespace, then take `c` if it is next */
  const eat = (c: string): boolean => {
    ws();
    return text[at] === c && ++at > 0;
  };
  const value = (depth: number): JsonValue => {
    if (depth > MAX_DEPTH) fail("nesting too deep");
    if (eat("{") || eat("[")) {
      const close = text[at - 1] === "{" ? "}" : "]";
      const object: JsonObject | null = close === "}" ? Object.create(null) as JsonObject : null;
      const array: JsonValue[] = [];
      if (!eat(close)) {
        do {
          if (object === null) array.push(value(depth + 1));
          else {
            if (!eat('"')) fail("expected a key");
            const key = string();
            if (!eat(":")) fail("expected ':'");
            object[key] = value(depth + 1);
          }
        } while (eat(","));
        if (!eat(close)) fail(`expected ',' or '${close}'`);
      }
      return object ?? array;
    }
    if (eat('"')) return string();
    for (const [word, v] of [["true", true], ["false", false], ["null", null]] as const) {
      if (text.startsWith(word, at)) {
        at += word.length;
        return v;
      }
    }
    const number = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/.exec(text.slice(at, at + 400));
    if (!number) return fail("unexpected character");
    at += number[0].length;
    return new JsonNumber(number[0]);
  };
  /** the rest of a string whose opening quote was taken */
  const string = (): string => {
    let out = "";
    for (;;) {
      const c = text[at];
      if (c === undefined) return fail("unterminated string");
      at++;
      if (c === '"') return out;
      if (c < " ") fail("control character in string");
      if (c !== "\\") {
        out += c;
        continue;
      }
      const e = text[at++]!;
      if (e in UNESCAPES) out += UNESCAPES[e];
      else if (e === "u" && /^[0-9a-fA-F]{4}$/.test(text.slice(at, at + 4))) {
        out += String.fromCharCode(parseInt(text.slice(at, at + 4), 16));
        at += 4;
      } else fail("bad escape");
    }
  };
  const result = value(0);
  ws();
  if (at !== text.length) fail("extra data after the value");
  return result;
}

/** Plain JavaScript values (numbers as `Number`); what the rest of the SDK works with. */
export function toPlain(value: JsonValue): unknown {
  if (value instanceof JsonNumber) return value.value;
  if (Array.isArray(value)) return value.map(toPlain);
  // fromEntries defines own properties: a "__proto__" key stays a key
  if (value !== null && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toPlain(v)]));
  return value;
}

/** An object (not null, not an array): the shape every record and answer must have. */
export const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value);

/** `isObject` for the lossless tree. */
export const isJsonObject = (value: JsonValue | undefined): value is JsonObject =>
  isObject(value) && !(value instanceof JsonNumber);

/**
 * The canonical bytes of §4.2 (Python's `canonical_json`): sorted keys by code point, no
 * whitespace, raw UTF-8, numbers as Python prints them.
 *
 * Plain JS numbers are accepted too (integers print as integers), for values built in code.
 *
 * @throws RangeError for NaN/Infinity and lone surrogates, which Python cannot sign either.
 */
export function canonicalJson(value: JsonValue | unknown): Uint8Array {
  return utf8Encode(canonicalText(value));
}

function canonicalText(value: unknown): string {
  if (value === null || typeof value === "boolean") return String(value);
  if (typeof value === "string") return quote(value);
  if (value instanceof JsonNumber) return pythonNumber(value.text);
  if (typeof value === "number") {
    if (Number.isInteger(value)) return pythonNumber(value.toFixed(0));
    return pythonFloat(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalText).join(",")}]`;
  if (typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => compareCodePoints(a, b));
    return `{${entries.map(([k, v]) => `${quote(k)}:${canonicalText(v)}`).join(",")}}`;
  }
  throw new TypeError(`cannot put a ${typeof value} in canonical JSON`);
}

/** Python's `str` ordering: by code point (JS `<` compares UTF-16 units). */
export function compareCodePoints(a: string, b: string): number {
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i]!.codePointAt(0)! - y[i]!.codePointAt(0)!;
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

/** the characters JSON escapes by a letter (or themselves), and those letters */
const ESCAPES: Record<string, string> = { '"': '"', "\\": "\\", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t" };
const UNESCAPES: Record<string, string> = Object.fromEntries([["/", "/"], ...Object.entries(ESCAPES).map(([c, e]) => [e, c])]);

/** A JSON string as Python's `json.dumps(ensure_ascii=False)` writes it (lone surrogates fail in `utf8Encode`). */
function quote(text: string): string {
  const escape = (c: string) => (c in ESCAPES ? `\\${ESCAPES[c]}` : `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  return `"${text.replace(/["\\\u0000-\u001f]/g, escape)}"`;
}

/** A JSON number lexeme as Python's `json.dumps(json.loads(lexeme))` prints it. */
export function pythonNumber(lexeme: string): string {
  if (/^-?\d+$/.test(lexeme)) return BigInt(lexeme).toString();
  return pythonFloat(Number(lexeme));
}

/** Python's `repr(float)`: shortest round-trip digits, `.0` on integers, exponent outside [1e-4, 1e16). */
export function pythonFloat(x: number): string {
  check(Number.isFinite(x), `${x} cannot be signed`);
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const sign = x < 0 ? "-" : "";
  const [mantissa, exp] = Math.abs(x).toExponential().split("e") as [string, string];
  const digits = mantissa.replace(".", "");
  const e = Number(exp);
  if (e < -4 || e >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${m}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  }
  if (e < 0) return `${sign}0.${"0".repeat(-e - 1)}${digits}`;
  const whole = digits.slice(0, e + 1).padEnd(e + 1, "0");
  const fraction = digits.slice(e + 1) || "0";
  return `${sign}${whole}.${fraction}`;
}
