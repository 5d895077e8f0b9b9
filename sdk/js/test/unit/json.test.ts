import { describe, expect, it } from "vitest";

import { utf8Decode } from "../../src/bytes.js";
import { canonicalJson, compareCodePoints, parseJson, pythonFloat, toPlain } from "../../src/json.js";
import { PYTHON, runPython } from "../helpers/python.js";

const canonical = (text: string) => utf8Decode(canonicalJson(parseJson(text)));

describe("canonical JSON (§4.2)", () => {
  it("keeps number lexemes Python wrote and prints them as Python does", () => {
    expect(canonical('{"b":1.0,"a":2.1e-07,"c":20480,"d":1e+16,"e":-0.0,"f":123456789012345678901}'))
      .toBe('{"a":2.1e-07,"b":1.0,"c":20480,"d":1e+16,"e":-0.0,"f":123456789012345678901}');
  });

  it("escapes only what Python escapes and sorts keys by code point", () => {
    expect(canonical('{"\\ud83d\\ude00":1,"\\uffff":2,"k":"a\\"\\\\\\n\\u0001\\u007f/é"}'))
      .toBe('{"k":"a\\"\\\\\\n\\u0001\u007f/é","\uffff":2,"😀":1}');
    expect(compareCodePoints("\uffff", "😀")).toBeLessThan(0); // JS's default sort says the opposite
  });

  it("refuses what Python cannot sign", () => {
    expect(() => canonical('{"a":"\\ud800"}')).toThrow(RangeError);
    expect(() => canonical('{"a":1e400}')).toThrow(RangeError);
    expect(() => parseJson("[1,]")).toThrow(SyntaxError);
    expect(() => parseJson("NaN")).toThrow(SyntaxError);
  });

  it("gives plain values for use, the last of repeated keys", () => {
    expect(toPlain(parseJson('{"a":[1.5,"x",null,true],"a":2}'))).toEqual({ a: 2 });
    expect(pythonFloat(1e-5)).toBe("1e-05");
    expect(pythonFloat(0.0001)).toBe("0.0001");
    expect(pythonFloat(1e15)).toBe("1000000000000000.0");
  });

  it.skipIf(PYTHON === null)("matches Python's canonical_json on random documents", () => {
    // Python writes documents as the server does (json.dumps, ASCII-escaped) and their canonical bytes
    const out = runPython(`
import json, random, math
from edgeship.contract.manifest import canonical_json
random.seed(7)
def value(depth):
    kind = random.randrange(8 if depth < 3 else 5)
    if kind == 0: return random.randint(-10**20, 10**20)
    if kind == 1:
        x = random.choice([random.random(), random.uniform(-1e6, 1e6), 10 ** random.uniform(-12, 22),
                           -(10 ** random.uniform(-12, 22)), float(random.randint(0, 10**6))])
        return x
    if kind == 2: return "".join(chr(random.choice([random.randrange(0, 0x80), random.randrange(0x80, 0xd800),
                                               random.randrange(0xe000, 0x110000)])) for _ in range(random.randrange(6)))
    if kind == 3: return random.choice([True, False, None])
    if kind == 4: return random.random() * 10 ** random.randrange(-8, 18)
    if kind == 5: return [value(depth + 1) for _ in range(random.randrange(4))]
    return {"".join(chr(random.choice([random.randrange(32, 0xd800), random.randrange(0xe000, 0x2ffff)]))
                    for _ in range(random.randrange(1, 4))): value(depth + 1) for _ in range(random.randrange(5))}
for _ in range(300):
    doc = {"k": value(0), "v": [value(1) for _ in range(3)]}
    print(json.dumps({"sent": json.dumps(doc), "canonical": canonical_json(doc).decode("utf-8")}))
`);
    const cases = out.trim().split("\n").map((line) => JSON.parse(line) as { sent: string; canonical: string });
    expect(cases).toHaveLength(300);
    for (const { sent, canonical: expected } of cases) expect(canonical(sent)).toBe(expected);
  });
});
