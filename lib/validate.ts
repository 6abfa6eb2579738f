/**
 * The argument checks of every public entry point, in one place, so that each refusal reads the same way:
 * "<argument>: expected <what it must be>, got <what came>". They run before any native work, so a bad option
 * costs nothing and leaves nothing half allocated.
 */
import { TarflowError, type TarflowErrorCode } from './errors.js';

type Code = TarflowErrorCode;

/** Bounds of a number: min/max are inclusive, above/below exclusive. */
export interface NumberRule {
  integer?: boolean;
  min?: number;
  max?: number;
  above?: number;
  below?: number;
}

const MAX_STRING = 60;
const MAX_ITEMS = 4;
const MAX_DEPTH = 2;

const quote = (s: string) => JSON.stringify(s.length > MAX_STRING ? s.slice(0, MAX_STRING) : s) + (s.length > MAX_STRING ? `... (${s.length} characters)` : '');

function renderKey(key: string): string {
  return /^[A-Za-z_$][\w$]*$/.test(key) && key.length <= MAX_STRING ? key : quote(key);
}

function render(value: unknown, depth: number): string {
  switch (typeof value) {
    case 'string': return quote(value);
    case 'number': return Object.is(value, -0) ? '-0' : String(value);
    case 'bigint': return `${value}n`;
    case 'undefined': return 'undefined';
    case 'boolean': return String(value);
    case 'symbol': return 'a symbol';
    case 'function': return 'a function';
  }
  if (value === null) return 'null';
  if (ArrayBuffer.isView(value)) {
    const kind = Object.prototype.toString.call(value).slice(8, -1);
    return 'length' in value ? `a ${kind} of ${String(value.length)} values` : `a ${kind}`;
  }
  if (depth >= MAX_DEPTH) return Array.isArray(value) ? '[...]' : '{...}';
  if (Array.isArray(value)) {
    const items = value.slice(0, MAX_ITEMS).map((v) => render(v, depth + 1));
    if (value.length > MAX_ITEMS) items.push(`... (${value.length} items)`);
    return `[${items.join(', ')}]`;
  }
  const keys = Object.keys(value as object);
  const entries = keys.slice(0, MAX_ITEMS).map((k) => `${renderKey(k)}: ${render((value as Record<string, unknown>)[k], depth + 1)}`);
  if (keys.length > MAX_ITEMS) entries.push(`... (${keys.length} keys)`);
  return `{${entries.join(', ')}}`;
}

/**
 * A received value as a message shows it: strings quoted and cut short, numbers as written (NaN, Infinity),
 * arrays and objects as a bounded JSON-like preview. Never throws, whatever the value (proxies, getters, cycles).
 */
export function describeValue(value: unknown): string {
  try {
    return render(value, 0);
  } catch {
    return 'an unreadable value';
  }
}

/** The one error shape; `got` is already rendered (describeValue for a value, or a count or summary). */
export function validationError(code: Code, name: string, expected: string, got: string, hint?: string): TarflowError {
  return new TarflowError(code, `${name}: expected ${expected}, got ${got}${hint ? `; ${hint}` : ''}`);
}

function describeRule(rule: NumberRule): string {
  const kind = rule.integer ? 'an integer' : 'a finite number';
  const low = rule.min !== undefined ? { bracket: '[', op: '>=', v: rule.min } : rule.above !== undefined ? { bracket: '(', op: '>', v: rule.above } : null;
  const high = rule.max !== undefined ? { bracket: ']', op: '<=', v: rule.max } : rule.below !== undefined ? { bracket: ')', op: '<', v: rule.below } : null;
  if (rule.integer && low?.op === '>=' && low.v === 1 && !high) return 'a positive integer';
  if (!rule.integer && low?.op === '>' && low.v === 0 && !high) return 'a positive finite number';
  if (low && high) return `${kind} in ${low.bracket}${low.v}, ${high.v}${high.bracket}`;
  if (low) return `${kind} ${low.op} ${low.v}`;
  if (high) return `${kind} ${high.op} ${high.v}`;
  return kind;
}

function inRange(x: number, rule: NumberRule): boolean {
  return (rule.min === undefined || x >= rule.min) && (rule.max === undefined || x <= rule.max) &&
    (rule.above === undefined || x > rule.above) && (rule.below === undefined || x < rule.below);
}

/** What `value` fails to be under `rule`, or null when it passes. */
function numberProblem(value: unknown, rule: NumberRule): string | null {
  if (typeof value === 'number' && Number.isFinite(value) && (!rule.integer || Number.isSafeInteger(value)) && inRange(value, rule)) return null;
  // 1e300 is an integer, but not one every size and offset computation can hold exactly.
  const unsafe = rule.integer && Number.isInteger(value) && !Number.isSafeInteger(value) ? ' (at most 2^53 - 1)' : '';
  return describeRule(rule) + unsafe;
}

/** JSON text parsed; text that is not JSON is refused as `<name>: expected JSON, got invalid JSON (<why>)`. */
export function parseJson(name: string, text: string, code: Code = 'ERR_TARFLOW_INVALID_ARGUMENT'): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw validationError(code, name, 'JSON', `invalid JSON (${(err as Error).message})`);
  }
}

/** A finite number (a safe integer when rule.integer) within the rule's bounds. */
export function checkNumber(name: string, value: unknown, rule: NumberRule = {}, code: Code = 'ERR_TARFLOW_INVALID_ARGUMENT'): number {
  const problem = numberProblem(value, rule);
  if (problem !== null) throw validationError(code, name, problem, describeValue(value));
  return value as number;
}

// Plain decimal notation: hexadecimal, binary, 'Infinity' and padding, which Number() also reads, are refused.
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/** A number written as text (a command-line value), in decimal notation, checked as checkNumber does. */
export function checkNumberText(name: string, text: string, rule: NumberRule = {}, code: Code = 'ERR_TARFLOW_INVALID_ARGUMENT'): number {
  const decimal = DECIMAL.test(text);
  const value = decimal ? Number(text) : NaN;
  const problem = numberProblem(value, rule);
  if (problem !== null) throw validationError(code, name, decimal ? problem : `${problem}, written in decimal`, describeValue(text));
  return value;
}

/** One of a fixed set of strings. */
export function checkOneOf<T extends string>(name: string, value: unknown, allowed: readonly T[], code: Code = 'ERR_TARFLOW_INVALID_ARGUMENT'): T {
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
    throw validationError(code, name, `one of ${allowed.map((a) => `'${a}'`).join(', ')}`, describeValue(value));
  }
  return value as T;
}

export function checkBoolean(name: string, value: unknown, code: Code = 'ERR_TARFLOW_INVALID_ARGUMENT'): boolean {
  if (typeof value !== 'boolean') throw validationError(code, name, 'true or false', describeValue(value));
  return value;
}

/** A non-empty string (paths, names). */
export function checkString(name: string, value: unknown, code: Code = 'ERR_TARFLOW_INVALID_ARGUMENT'): string {
  if (typeof value !== 'string' || value === '') throw validationError(code, name, 'a non-empty string', describeValue(value));
  return value;
}

/**
 * A callback option, or undefined. Checked up front: a non-function would otherwise fail only when first called,
 * deep in a run, after its work had started.
 */
export function checkCallback(name: string, value: unknown): void {
  if (value !== undefined && typeof value !== 'function') throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', name, 'a function', describeValue(value));
}

/** An AbortSignal (from an AbortController), or undefined: anything else would never abort, or would throw when listened to. */
export function checkSignal(name: string, value: unknown): void {
  // By its shape, not instanceof: a signal of another realm (a vm context) or of a polyfill works as well.
  const signal = value as { aborted?: unknown; addEventListener?: unknown; removeEventListener?: unknown } | null;
  const isSignal = typeof signal === 'object' && signal !== null && typeof signal.aborted === 'boolean' &&
    typeof signal.addEventListener === 'function' && typeof signal.removeEventListener === 'function';
  if (value !== undefined && !isSignal) {
    throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', name, 'an AbortSignal', describeValue(value), 'pass the signal of an AbortController (controller.signal)');
  }
}

/** A plain object (not null, not an array): an options bag, a spec, a config. */
export function checkObject(name: string, value: unknown, code: Code = 'ERR_TARFLOW_INVALID_ARGUMENT'): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value) || ArrayBuffer.isView(value)) {
    throw validationError(code, name, 'an object', describeValue(value));
  }
  return value as Record<string, unknown>;
}

/** Edit distance with a swap of neighbours counting as one edit (the usual typo), for "did you mean". */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

/** The names a misspelling of `name` most likely meant: a few letters off, as case and a dropped dash are. */
export function nearestNames(name: string, names: readonly string[]): string[] {
  const lower = name.toLowerCase();
  return names.filter((k) => editDistance(k.toLowerCase(), lower) <= Math.min(2, Math.floor(k.length / 3)));
}

/**
 * The option names of an options type T, as a value: `{ a: true, b: true } satisfies OptionNames<T>` makes the
 * compiler refuse a list that misses one of T's keys or names another, so the run-time list cannot drift from T.
 * `satisfies` checks only the keys written in the literal; a list that spreads another is built with
 * `optionNames<T>()({ ...other, c: true })`, which refuses a spread key that T lacks too (the compiler says the
 * key's value "is not assignable to type 'never'").
 */
export type OptionNames<T> = Readonly<Record<keyof T, true>>;

export function optionNames<T>() {
  return <O extends OptionNames<T>>(names: O & { readonly [K in Exclude<keyof O, keyof T>]: never }): O => names;
}

/**
 * No key outside `known`: a misspelt option (batchsize, step) would otherwise be ignored and its default used
 * without a word. A key whose value is undefined is let through, as an option left out.
 */
export function checkKnownKeys(name: string, value: object, known: Readonly<Record<string, true>>, code: Code = 'ERR_TARFLOW_INVALID_ARGUMENT'): void {
  for (const key of Object.keys(value)) {
    if (Object.hasOwn(known, key) || (value as Record<string, unknown>)[key] === undefined) continue;
    const names = Object.keys(known);
    const near = nearestNames(key, names);
    const hint = near.length > 0 ? `did you mean ${near.map((k) => `'${k}'`).join(' or ')}?` : undefined;
    throw validationError(code, name, `only the options ${names.map((k) => `'${k}'`).join(', ')}`, `the unknown option ${describeValue(key)}`, hint);
  }
}

/** The entries of `value` whose keys are in `known`: a wider spec narrowed to the options one call takes. */
export function pickKeys<T extends object>(value: T, known: Readonly<Record<string, true>>): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([k]) => Object.hasOwn(known, k))) as Partial<T>;
}

type ArrayClass = abstract new (...args: never[]) => ArrayBufferView;

/** An instance of one of the given typed-array classes (a dtype check: no silent conversion). */
export function checkArray<C extends ArrayClass>(name: string, value: unknown, types: readonly C[]): InstanceType<C> {
  if (!types.some((t) => value instanceof t)) {
    const names = types.map((t) => `${/^[AEIO]/.test(t.name) ? 'an' : 'a'} ${t.name}`);
    const expected = names.length > 1 ? `${names.slice(0, -1).join(', ')} or ${names[names.length - 1]}` : names[0];
    throw validationError('ERR_TARFLOW_DTYPE', name, expected, describeValue(value));
  }
  return value as InstanceType<C>;
}

/** Exactly `length` elements; `shape` says what they are (e.g. "2 x 1 x 8 x 8 values"). */
export function checkLength(name: string, value: ArrayLike<unknown>, length: number, shape: string): void {
  if (value.length !== length) throw validationError('ERR_TARFLOW_SHAPE', name, shape, `${value.length}`);
}

/** A non-empty whole number of items of `per` elements each (a batch of images); returns the item count. */
export function checkBatch(name: string, value: ArrayLike<unknown>, per: number, item: string): number {
  if (value.length === 0 || value.length % per !== 0) {
    throw validationError('ERR_TARFLOW_SHAPE', name, `a whole, non-zero number of ${item} (a multiple of ${per} values)`, `${value.length} values`);
  }
  return value.length / per;
}

/** Class labels of a model with numClasses classes; -1 (no class, the unconditional branch) where allowed. */
export function checkLabels(name: string, labels: ArrayLike<number>, numClasses: number, allowNone: boolean, code: Code = 'ERR_TARFLOW_INVALID_ARGUMENT'): void {
  const min = allowNone ? -1 : 0;
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i];
    if (!Number.isInteger(y) || y < min || y >= numClasses) {
      const expected = `a class index in 0..${numClasses - 1} (the model has ${numClasses} classes)${allowNone ? ' or -1 for none' : ''}`;
      throw validationError(code, `${name}[${i}]`, expected, describeValue(y));
    }
  }
}

/** `check(value)` when a value was given; undefined stays undefined (an option left to its default). */
export function optional<V, T>(value: V | undefined, check: (v: V) => T): T | undefined {
  return value === undefined ? undefined : check(value);
}

/** Class names as a checkpoint records them (metadata 'class_names'): distinct strings, `count` of them when given. */
export function isClassNameList(value: unknown, count?: number): value is string[] {
  return Array.isArray(value) && (count === undefined || value.length === count) && value.every((n) => typeof n === 'string') && new Set(value).size === value.length;
}
